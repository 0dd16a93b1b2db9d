"""Lineage graphs: a real round's graph (model, stored PNG/SVG, the promoted path), `flywheel lineage --graph`,
and a machine without Graphviz's `dot`, where the round's graph is skipped with one warning."""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from pathlib import Path

from test_catalog import BASE, COMPLETIONS, MODEL, PROMPTS, SFT, SOURCE, P, art, chain, step

from flows.cli import main
from flows.lineage_graph import (
    MISSING_DOT,
    render,
    round_graph,
    round_graph_of,
    short,
    step_node,
    store_round_graph,
    to_digraph,
)
from flows.publish import report_markdown
from flows.round import round_flow
from storage.artifacts import ArtifactStore
from storage.catalog import Catalog
from storage.runtime import Runtime
from storage.store import open_store
from tasks.stage import runtime

SVG = "{http://www.w3.org/2000/svg}"


def _svg_nodes(svg: bytes) -> set[str]:
    """The <title> of every node of a Graphviz SVG: the DOT node names."""
    root = ET.fromstring(svg)
    return {g.find(f"{SVG}title").text for g in root.iter(f"{SVG}g") if g.get("class") == "node"}


def _highlighted(g) -> set[tuple[str, str]]:
    return {(e.src, e.dst) for e in g.edges if e.highlighted}


def test_a_real_rounds_graph_report_and_cli(make_config, prefect_harness, tmp_path, capsys):
    cfg = make_config(pipeline="graph")
    report = round_flow(cfg)
    rt = runtime(cfg)
    cat, r = rt.catalog, report.round
    steps = cat.steps_of(cfg.pipeline, r)
    outputs = {name: json.loads(s["outputs"]) for name, s in steps.items()}
    ids = {i for s in steps.values() for col in ("inputs", "outputs") for i in json.loads(s[col]).values()}
    arts = cat.artifacts_by_id(sorted(ids))
    g = round_graph_of(cat, cfg.pipeline, r)

    # Every step of the round is a node, with its rows in -> rows out; every data artifact is one too.
    assert {n for n, node in g.nodes.items() if node.kind == "step"} == {step_node(s, r) for s in steps}
    for name, s in steps.items():
        if s["rows_in"] is not None:
            assert f"{s['rows_in']:,} → {s['rows_out']:,} rows" in g.nodes[step_node(name, r)].label
    kinds = {node.kind for node in g.nodes.values()}
    assert {"source", "prompts", "completions", "scores", "sft", "pairs", "model", "eval-results", "decision"} <= kinds
    assert not any(k.endswith("-summary") for k in kinds)
    # Edges carry the catalog's row counts: in and out of each step, with the yield on the way out.
    edges = {(e.src, e.dst): e for e in g.edges}
    for name, s in steps.items():
        for i in json.loads(s["inputs"]).values():
            assert edges[(short(i), step_node(name, r))].rows == arts[i]["rows"]
        for out_name, i in outputs[name].items():
            if out_name != "summary":
                assert edges[(step_node(name, r), short(i))].rows == arts[i]["rows"]
    prompts, completions = outputs["curate"]["prompts"], outputs["generate"]["completions"]
    assert edges[(step_node("curate", r), short(prompts))].rows == 48
    assert edges[(step_node("generate", r), short(completions))].label == "192 rows\n400.0%"  # 4 per prompt
    sft = outputs["select"]["sft"]
    assert edges[(step_node("select", r), short(sft))].label.endswith(f"{arts[sft]['rows'] / 48:.1%}")

    # The promoted path: policy -> SFT -> DPO -> candidate -> gate -> decision, exactly when it promoted.
    rnd = cat.round(cfg.pipeline, r)
    sft_model, decision = outputs["train-sft"]["model"], outputs["promote"]["decision"]
    path = [short(report.policy_in), step_node("train-sft", r), short(sft_model), step_node("train-dpo", r)]
    path += [short(report.candidate), step_node("promote", r), short(decision)]
    chain_edges = set(zip(path, path[1:]))
    assert _highlighted(g) == (chain_edges if report.promoted else set())
    flipped = round_graph({**rnd, "promoted": not rnd["promoted"]}, steps, arts)
    assert _highlighted(flipped) == (set() if report.promoted else chain_edges)

    # Stored with the round's files, and the SVG's nodes are the graph's.
    prefix = f"runs/{cfg.pipeline}/round-{r:04d}"
    assert rt.store.exists(f"{prefix}/lineage.png") and rt.store.exists(f"{prefix}/lineage.svg")
    assert rt.store.get_bytes(f"{prefix}/lineage.png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert _svg_nodes(rt.store.get_bytes(f"{prefix}/lineage.svg")) == set(g.nodes)

    # flywheel lineage --graph: the candidate's ancestors, across steps, down to the source files.
    home = str(cfg.resolve_home())
    out = tmp_path / "candidate.svg"
    assert main(["--home", home, "lineage", report.candidate[:12], "--graph", str(out)]) == 0
    ancestry = cat.lineage(report.candidate)
    expected = {short(report.candidate)} | {short(e["src"]) for e in ancestry}
    expected |= {step_node(e["step"], e["round"]) for e in ancestry}
    assert _svg_nodes(out.read_bytes()) == expected
    assert {short(i) for i in json.loads(steps["curate"]["inputs"]).values()} <= expected
    assert f"lineage graph: {out}" in capsys.readouterr().err
    # ... and of a training row: its chain of parent rows, as DOT source.
    row = rt.artifacts.get_table(sft).column("row_id")[0].as_py()
    dot = tmp_path / "row.dot"
    assert main(["--home", home, "lineage", row, "--graph", str(dot)]) == 0
    text = dot.read_text().replace('"', "")  # DOT quotes only the names that start with a digit
    assert text.startswith("digraph lineage")
    for e in cat.row_lineage(row):
        assert f"{e['parent_id']} -> {e['row_id']}" in text


def test_a_bad_graph_suffix_is_one_clear_line(tmp_path, capsys):
    assert main(["--home", str(tmp_path), "lineage", "abc", "--graph", str(tmp_path / "x.jpeg")]) == 2
    err = capsys.readouterr().err
    assert f"flywheel: --graph {tmp_path / 'x.jpeg'}: no graph format for '.jpeg': use .svg, .png, .pdf or .dot" in err
    assert "Traceback" not in err and not (tmp_path / "x.jpeg").exists()


def _promoted_round(home: Path) -> Runtime:
    """test_catalog's hand-built chain as round 1 of a file:// store, with a gate that promoted the model."""
    cat = Catalog(home / "catalog.duckdb")
    store = open_store(f"file://{home / 'store'}")
    cat.start_round(P, 1, "cfg", BASE, None)
    chain(cat)
    decision = "decision-1"
    cat.record_step(
        step("promote", {"policy": BASE, "candidate": MODEL}, {"decision": art(decision, "decision", None)})
    )
    kw = dict(candidate=MODEL, policy_out=MODEL, promoted=True, reason="promoted: 0.6 >= 0.5", manifest_uri="m")
    cat.finish_round(P, 1, **kw)
    return Runtime(home, store, ArtifactStore(store, home / "cache"), cat)


def test_without_dot_the_round_graph_is_skipped_with_one_warning(tmp_path, monkeypatch, caplog, capsys):
    rt = _promoted_round(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # no `dot` to be found

    with caplog.at_level(logging.WARNING, logger="flywheel"):
        assert store_round_graph(rt, P, 1, tmp_path) is None
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == f"round 1: {MISSING_DOT}"
    assert "apt-get install graphviz" in warning and "make graphviz" in warning
    assert not rt.store.list("runs/")
    rnd, steps = rt.catalog.round(P, 1), rt.catalog.steps_of(P, 1)
    assert f"Skipped: {MISSING_DOT}." in report_markdown(rnd, steps, {}, "plot", [], lineage_graph=None)

    # The graph itself needs no `dot`: its DOT source, with the promoted path bold and green.
    g = round_graph_of(rt.catalog, P, 1)
    assert _highlighted(g) == {
        (BASE, "train@r1"),
        ("train@r1", MODEL),
        (MODEL, "promote@r1"),
        ("promote@r1", "decision-1"),
    }
    assert {(e.src, e.dst): e.label for e in g.edges if e.rows} == {
        (SOURCE, "curate@r1"): "10 rows",
        ("curate@r1", PROMPTS): "2 rows",
        (PROMPTS, "generate@r1"): "2 rows",
        ("generate@r1", short(COMPLETIONS)): "3 rows",  # short ids: test_catalog's are readable, not sha256s
        (short(COMPLETIONS), "select@r1"): "3 rows",
        ("select@r1", SFT): "1 row",
        (SFT, "train@r1"): "1 row",
    }
    source = to_digraph(g).source
    assert f'"{BASE}" -> "train@r1" [color="#1a7f37" fontcolor="#1a7f37" penwidth=3 style=bold]' in source
    assert render(g, tmp_path / "g.dot").read_text() == source

    # The CLI says the same and points at the format that needs no `dot`.
    home = ["--home", str(tmp_path)]
    assert main([*home, "lineage", MODEL, "--graph", str(tmp_path / "m.svg")]) == 2
    assert f"{MISSING_DOT}; or write the DOT source with --graph {tmp_path / 'm.dot'}" in capsys.readouterr().err
    assert main([*home, "lineage", MODEL, "--graph", str(tmp_path / "m.dot")]) == 0
    assert f'"{SFT}" -> "train@r1"' in (tmp_path / "m.dot").read_text()
