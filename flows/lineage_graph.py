"""Lineage graphs people can look at: a round's steps and artifacts, or the ancestry of one artifact or row.

Catalog rows become a small model (`LineageGraph`: nodes and edges with their labels), the model becomes
a `graphviz.Digraph`, and Graphviz's `dot` renders it. Only rendering needs `dot`, so the model and the
DOT source can be checked without it.

- A round's graph (stored with the round as `runs/<pipeline>/round-NNNN/lineage.{png,svg}`): sources →
  prompts → completions → scores → SFT rows / pairs → checkpoints → eval results → decision. Steps are
  boxes with their duration and rows in → rows out; edges carry row counts, and a step's outputs their
  yield (rows out of the step's rows in). When the round promoted, the path of the model from the policy
  through the candidate to the decision is drawn bold and green.
- An ancestry graph: `flywheel lineage <artifact-or-row-id> --graph out.svg` (.svg, .png, .pdf or .dot).
"""

from __future__ import annotations

import json
import shutil
import textwrap
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import graphviz

if TYPE_CHECKING:
    from storage.catalog import Catalog
    from storage.runtime import Runtime

FORMATS = {".svg": "svg", ".png": "png", ".pdf": "pdf", ".dot": "dot"}
MISSING_DOT = (
    "Graphviz's `dot` is not installed, so no lineage graph was drawn: "
    "install it with `apt-get install graphviz` (or `make graphviz`)"
)
# Kinds the promoted path may pass through: the model and its checkpoints, never the data trained on.
MODEL_KINDS = frozenset({"model"})
SOURCE_KINDS = frozenset({"source", "eval-set"})
GREEN = "#1a7f37"
SHAPES = {"step": "box", "model": "box3d", "source": "cylinder", "eval-set": "cylinder", "decision": "box"}


@dataclass(frozen=True)
class Node:
    name: str  # the DOT name, and so the node's <title> in the SVG: a 12-digit artifact id or "<step>@r<round>"
    label: str
    kind: str  # "step", or the artifact's kind
    highlighted: bool = False


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    label: str = ""
    rows: int | None = None
    highlighted: bool = False
    dashed: bool = False  # not an artifact edge of the catalog: the gate reading the eval metrics


@dataclass
class LineageGraph:
    title: str
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)


def short(artifact_id: str) -> str:
    return artifact_id[:12]


def step_node(step: str, round_num: int) -> str:
    return f"{step}@r{round_num}"


def _rows(n: int | None) -> str:
    return "" if n is None else f"{n:,} row{'' if n == 1 else 's'}"


def artifact_label(a: dict[str, Any], role: str | None = None) -> str:
    """Role (policy in, candidate, ...), kind, short id, the file name of a source, rows of a table."""
    lines = [role] if role else []
    lines += [a["kind"] or "?", short(a["id"])]
    if a["kind"] in SOURCE_KINDS and a.get("uri"):
        lines.append(a["uri"].rstrip("/").rsplit("/", 1)[-1])
    return "\n".join([*lines, _rows(a.get("rows"))]).strip()


def step_label(s: dict[str, Any]) -> str:
    """Step name, duration (reused or not), rows in → rows out with the yield."""
    lines = [s["step"], f"{s.get('duration_s') or 0.0:.1f} s" + (" (reused)" if s.get("reused") else "")]
    rows_in, rows_out = s.get("rows_in"), s.get("rows_out")
    if rows_in is not None and rows_out is not None:
        ratio = f" ({rows_out / rows_in:.1%})" if rows_in else ""
        lines.append(f"{rows_in:,} → {rows_out:,} rows{ratio}")
    return "\n".join(lines)


def build_graph(
    title: str, steps: list[dict[str, Any]], artifacts: dict[str, dict[str, Any]], roles: dict[str, str]
) -> LineageGraph:
    """The graph of `steps`, each a dict with step, round, inputs and outputs (lists of artifact ids),
    rows_in, rows_out, duration_s and reused. `artifacts` holds the catalog rows of those ids (an id it
    lacks is drawn as kind "?"); `roles` puts a first line on some artifacts ("candidate", "promoted")."""
    g = LineageGraph(title)

    def add_artifact(artifact_id: str) -> dict[str, Any]:
        a = artifacts.get(artifact_id) or {"id": artifact_id, "kind": "?", "rows": None}
        g.nodes.setdefault(
            short(artifact_id), Node(short(artifact_id), artifact_label(a, roles.get(artifact_id)), a["kind"])
        )
        return a

    seen: set[tuple[str, str]] = set()
    for s in steps:
        name = step_node(s["step"], s["round"])
        g.nodes[name] = Node(name, step_label(s), "step")
        for artifact_id in s["inputs"]:
            a = add_artifact(artifact_id)
            if (short(artifact_id), name) not in seen:
                seen.add((short(artifact_id), name))
                g.edges.append(Edge(short(artifact_id), name, _rows(a["rows"]), a["rows"]))
        for artifact_id in s["outputs"]:
            a, rows_in = add_artifact(artifact_id), s.get("rows_in")
            label = _rows(a["rows"]) + (f"\n{a['rows'] / rows_in:.1%}" if a["rows"] is not None and rows_in else "")
            if (name, short(artifact_id)) not in seen:
                seen.add((name, short(artifact_id)))
                g.edges.append(Edge(name, short(artifact_id), label, a["rows"]))
    return g


def path_between(g: LineageGraph, start: str, end: str) -> set[tuple[str, str]]:
    """Edges on some path from node `start` to node `end` that passes only through steps and models.

    >>> g = LineageGraph("t", {n: Node(n, n, k) for n, k in [("p", "model"), ("s", "step"), ("d", "sft"), ("c", "model")]},
    ...                  [Edge("p", "s"), Edge("s", "d"), Edge("d", "s"), Edge("s", "c")])
    >>> sorted(path_between(g, "p", "c"))
    [('p', 's'), ('s', 'c')]
    """
    passable = {n for n, node in g.nodes.items() if node.kind == "step" or node.kind in MODEL_KINDS} | {start, end}
    links = [(e.src, e.dst) for e in g.edges if e.src in passable and e.dst in passable]

    def reach(frm: str, forward: bool) -> set[str]:
        out, todo = {frm}, [frm]
        while todo:
            n = todo.pop()
            for a, b in links:
                nxt = b if forward else a
                if (a if forward else b) == n and nxt not in out:
                    out.add(nxt)
                    todo.append(nxt)
        return out

    on = reach(start, True) & reach(end, False)
    return {(a, b) for a, b in links if a in on and b in on}


def highlight(g: LineageGraph, links: set[tuple[str, str]]) -> LineageGraph:
    """`g` with these edges and the nodes they join drawn highlighted."""
    names = {n for link in links for n in link}
    nodes = {n: replace(node, highlighted=n in names) for n, node in g.nodes.items()}
    edges = [replace(e, highlighted=(e.src, e.dst) in links) for e in g.edges]
    return LineageGraph(g.title, nodes, edges)


def round_graph(
    rnd: dict[str, Any], steps: dict[str, dict[str, Any]], artifacts: dict[str, dict[str, Any]]
) -> LineageGraph:
    """A round's graph from its catalog rows: `rnd` from catalog.round, `steps` from catalog.steps_of, and
    `artifacts` the rows of every id the steps name (catalog.artifacts_by_id). Step summaries are left out:
    every step writes one and no step reads them."""
    views = []
    for name, s in steps.items():
        outputs = json.loads(s["outputs"] or "{}")
        keep = [i for i in outputs.values() if not str((artifacts.get(i) or {}).get("kind")).endswith("-summary")]
        views.append({**s, "step": name, "inputs": list(json.loads(s["inputs"] or "{}").values()), "outputs": keep})
    decision = json.loads((steps.get("promote") or {}).get("outputs") or "{}").get("decision")
    verdict = "promoted" if rnd["promoted"] else "policy kept"
    roles = {rnd["policy_in"]: "policy in", rnd["candidate"]: "candidate"}
    if decision:
        roles[decision] = "\n".join([verdict, *textwrap.wrap(rnd["reason"] or "", 40)])
    title = f"{rnd['pipeline']}, round {rnd['round']}: {verdict}"
    g = build_graph(title, views, artifacts, {k: v for k, v in roles.items() if k})
    if "promote" in steps:
        # The gate reads the eval steps' metrics in the flow, not an artifact, so the catalog has no such edge.
        for name in ("evaluate-policy", "evaluate-candidate"):
            results = json.loads((steps.get(name) or {}).get("outputs") or "{}").get("results")
            if results:
                g.edges.append(Edge(short(results), step_node("promote", rnd["round"]), "metrics", dashed=True))
    if not (rnd["promoted"] and decision and rnd["candidate"] and rnd["policy_in"]):
        return g
    to_candidate = path_between(g, short(rnd["policy_in"]), short(rnd["candidate"]))
    return highlight(g, to_candidate | path_between(g, short(rnd["candidate"]), short(decision)))


def round_graph_of(cat: Catalog, pipeline: str, r: int) -> LineageGraph:
    steps = cat.steps_of(pipeline, r)
    ids = {i for s in steps.values() for col in ("inputs", "outputs") for i in json.loads(s[col] or "{}").values()}
    return round_graph(cat.round(pipeline, r), steps, cat.artifacts_by_id(sorted(ids)))


def ancestry_graph_of(cat: Catalog, artifact: dict[str, Any], edges: list[dict[str, Any]]) -> LineageGraph:
    """The ancestry of an artifact (the edges of catalog.lineage), each step joining its inputs to its outputs."""
    by_step: dict[tuple[str, int, str], dict[str, Any]] = {}
    rounds: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for e in edges:
        key = (e["pipeline"], e["round"], e["step"])
        if key not in by_step:
            if key[:2] not in rounds:
                rounds[key[:2]] = cat.steps_of(e["pipeline"], e["round"])
            rec = rounds[key[:2]].get(e["step"]) or {}
            by_step[key] = {**rec, "step": e["step"], "round": e["round"], "inputs": [], "outputs": []}
        for col, artifact_id in (("inputs", e["src"]), ("outputs", e["dst"])):
            if artifact_id not in by_step[key][col]:
                by_step[key][col].append(artifact_id)
    ids = sorted({artifact["id"]} | {i for e in edges for i in (e["src"], e["dst"])})
    g = build_graph(
        f"ancestry of {artifact['kind']} {short(artifact['id'])}", list(by_step.values()), cat.artifacts_by_id(ids), {}
    )
    node = g.nodes.get(short(artifact["id"])) or Node(short(artifact["id"]), artifact_label(artifact), artifact["kind"])
    g.nodes[node.name] = replace(node, highlighted=True)
    return g


def row_graph_of(cat: Catalog, row_id: str, rows: list[dict[str, Any]]) -> LineageGraph:
    """The chain of parent rows of one row (catalog.row_lineage), down to the source files."""
    g = LineageGraph(f"ancestry of row {row_id}")
    held = {r["row_id"]: r for r in rows}
    files = cat.artifacts_by_id(sorted({r["parent_id"] for r in rows} - set(held)))
    for r in rows:
        for rid in (r["row_id"], r["parent_id"]):
            if rid in g.nodes:
                continue
            if rid in held:
                h = held[rid]
                label = f"{h['kind'] or '?'} row\n{rid}\nround {h['round']}, {h['step'] or '?'}"
                g.nodes[rid] = Node(rid, label, h["kind"] or "?", highlighted=rid == row_id)
            elif rid in files:
                g.nodes[rid] = Node(rid, artifact_label(files[rid]), files[rid]["kind"])
            else:
                g.nodes[rid] = Node(rid, f"row\n{rid}", "?")
        g.edges.append(Edge(r["parent_id"], r["row_id"], f"in {short(r['artifact_id'])}"))
    return g


def to_digraph(g: LineageGraph) -> graphviz.Digraph:
    """The DOT graph of `g`, left to right; highlighted edges bold and green, a promoted decision filled."""
    dot = graphviz.Digraph(
        "lineage",
        graph_attr={
            "rankdir": "LR",
            "label": g.title,
            "labelloc": "t",
            "fontname": "Helvetica",
            "fontsize": "14",
            "dpi": "72",
        },
        node_attr={"fontname": "Helvetica", "fontsize": "10", "style": "filled", "fillcolor": "#f6f8fa"},
        edge_attr={"fontname": "Helvetica", "fontsize": "9", "color": "#57606a"},
    )
    for n in g.nodes.values():
        style = {"shape": SHAPES.get(n.kind, "note")}
        if n.kind == "step":
            style |= {"style": "rounded,filled", "fillcolor": "#ddf4ff"}
        if n.highlighted:
            style |= {"penwidth": "2.5", "color": GREEN}
            if n.kind == "decision":
                style |= {"fillcolor": "#dafbe1", "peripheries": "2"}
        dot.node(n.name, n.label, **style)
    for e in g.edges:
        style = {"color": GREEN, "penwidth": "3", "style": "bold", "fontcolor": GREEN} if e.highlighted else {}
        if e.dashed:
            style["style"] = "dashed"
        dot.edge(e.src, e.dst, **({"label": e.label} if e.label else {}), **style)
    return dot


def graph_problem(path: Path) -> str | None:
    """Why `path` cannot be drawn here (a suffix with no format, `dot` missing for an image), or None."""
    if path.suffix.lower() not in FORMATS:
        return f"--graph {path}: no graph format for {path.suffix or 'a name without a suffix'!r}: use .svg, .png, .pdf or .dot"
    if FORMATS[path.suffix.lower()] != "dot" and shutil.which("dot") is None:
        return f"{MISSING_DOT}; or write the DOT source with --graph {path.with_suffix('.dot')}"
    return None


def render(g: LineageGraph, path: Path) -> Path:
    """Write `g` to `path` in the format its suffix names (.svg, .png, .pdf; .dot, the source, needs no `dot`).

    Raises ValueError (graph_problem's message) when that cannot be done here.
    """
    if problem := graph_problem(path):
        raise ValueError(problem)
    src = to_digraph(g)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = FORMATS[path.suffix.lower()]
    if fmt == "dot":
        path.write_text(src.source)
    else:
        path.write_bytes(src.pipe(format=fmt))
    return path


def draw_lineage(
    cat: Catalog, row_id: str, artifact: dict | None, edges: list[dict], rows: list[dict], path: Path
) -> Path:
    """`flywheel lineage --graph`: the ancestry of the artifact, or else of the row, drawn to `path`."""
    return render(ancestry_graph_of(cat, artifact, edges) if artifact else row_graph_of(cat, row_id, rows), path)


def store_round_graph(rt: Runtime, pipeline: str, r: int, tmp: Path) -> tuple[str, bytes] | None:
    """Draw round r's graph, store it as `runs/<pipeline>/round-NNNN/lineage.png` and `.svg`, and return
    (the SVG's store URL, the PNG); None, with one warning, where `dot` is missing: a round never fails
    for want of a picture."""
    from tasks.stage import get_logger

    if shutil.which("dot") is None:
        get_logger().warning("round %d: %s", r, MISSING_DOT)
        return None
    g = round_graph_of(rt.catalog, pipeline, r)
    prefix = f"runs/{pipeline}/round-{r:04d}"
    for suffix in ("png", "svg"):
        rt.store.put_file(f"{prefix}/lineage.{suffix}", render(g, tmp / f"lineage.{suffix}"))
    return rt.store.url(f"{prefix}/lineage.svg"), (tmp / "lineage.png").read_bytes()
