"""The core's preference summary (prefs_summary.json): where the truth sits in chosen lists and rankings."""

from mint_core.summary import summarize
from mint_core.types import PreferenceExample, Prompt


def _pair(case_id: str, rank: int, position: int | None) -> PreferenceExample:
    return PreferenceExample(case_id=case_id, prompt=Prompt(text="p"), chosen="c", rejected="r", kind="pair",
                             meta={"true_label_rank": rank, "true_label_position": position,
                                   "true_label_in_chosen": position is not None, "true_label_forced": False})


def test_truth_position_counts():
    summary = summarize([_pair("a", 0, 0), _pair("b", 0, 0), _pair("c", 2, 2), _pair("d", 14, None)])
    assert summary["chosen_starts_with_truth"] == 0.5
    assert summary["true_label_position_counts"] == {"1": 2, "3": 1, "absent": 1}
    assert summary["teacher_rank_counts"] == {"1": 2, "3": 1, "11+": 1}
