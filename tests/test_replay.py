"""Replay of earlier rounds' training rows (tasks/selection/replay.py), on literal rows."""

from tasks.selection.replay import replay_rows


def _sft(row_id, prompt_id, reward):
    return {"row_id": row_id, "prompt_id": prompt_id, "reward": reward, "messages": [row_id]}


def test_budget_is_share_of_this_round_with_a_floor_and_a_cap():
    now = [_sft(f"n{i}", f"now{i}", 1.0) for i in range(4)]
    earlier = [[_sft(f"e{i}", f"old{i}", 1.0) for i in range(20)]]
    assert len(replay_rows("sft", now, earlier, 2, share=0.5, cap=100)) == 2
    assert len(replay_rows("sft", now, earlier, 2, share=2.0, cap=100)) == 8
    assert len(replay_rows("sft", now, earlier, 2, share=2.0, cap=3)) == 3
    assert len(replay_rows("sft", [], earlier, 2, share=1.0, cap=100)) == 0
    assert len(replay_rows("sft", [], earlier, 2, share=1.0, cap=100, floor=5)) == 5
    assert len(replay_rows("sft", now, earlier, 2, share=0.0, cap=100, floor=0)) == 0


def test_prompts_selected_this_round_are_not_replayed_and_each_prompt_once():
    now = [_sft("a", "p1", 1.0)]
    round2 = [_sft("b", "p1", 1.0), _sft("c", "p2", 0.5), _sft("f", "p4", 1.0)]
    round1 = [_sft("d", "p2", 1.0), _sft("e", "p3", 0.75)]
    out = replay_rows("sft", now, [round2, round1], 3, share=10.0, cap=10)
    # p1 is this round's; p2's best row is round 1's (reward 1.0 beats 0.5); ties go to the newer round.
    assert [r["replay_of"] for r in out] == ["f", "d", "e"]
    assert [r["prompt_id"] for r in out] == ["p4", "p2", "p3"]
    assert all(r["messages"] == [r["replay_of"]] for r in out), "a replayed row is a copy of the earlier row"


def test_replayed_rows_get_new_ids_that_depend_on_the_round():
    earlier = [[_sft("e", "p", 1.0)]]
    r3 = replay_rows("sft", [], earlier, 3, 1.0, 10, floor=1)[0]
    r4 = replay_rows("sft", [], earlier, 4, 1.0, 10, floor=1)[0]
    assert r3["row_id"] != "e" and r3["row_id"] != r4["row_id"]
    assert r3["row_id"] == replay_rows("sft", [], earlier, 3, 1.0, 10, floor=1)[0]["row_id"]


def test_pairs_rank_by_margin():
    pair = lambda i, p, m: {"row_id": i, "prompt_id": p, "margin": m}  # noqa: E731
    out = replay_rows("pairs", [], [[pair("x", "p1", 0.5), pair("y", "p2", 1.0), pair("z", "p3", 0.75)]], 2, 1, 9, 2)
    assert [r["replay_of"] for r in out] == ["y", "z"]
