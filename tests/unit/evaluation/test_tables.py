"""The side-by-side table and logger metrics read lm-eval's results dict: metric names, filters, standard
errors and differences from the base."""

from lit_lora.evaluation.tables import logged_metrics, metrics, side_by_side


def results(acc: float, em: float) -> dict:
    # The shape lm-eval's simple_evaluate returns: "<metric>,<filter>" and "<metric>_stderr,<filter>".
    return {"results": {
        "mc": {"alias": "mc", "acc,none": acc, "acc_stderr,none": 0.05, "acc_norm,none": acc / 2,
               "acc_norm_stderr,none": "N/A"},
        "arith": {"alias": "arith", "exact_match,strict-match": em, "exact_match_stderr,strict-match": 0.01},
    }}


def test_metrics_keep_lm_evals_order_filters_and_standard_errors():
    found = [(m.task, m.metric, m.value, m.stderr) for m in metrics(results(0.5, 0.25))]
    assert found == [("mc", "acc", 0.5, 0.05), ("mc", "acc_norm", 0.25, None),
                     ("arith", "exact_match (strict-match)", 0.25, 0.01)]


def test_logged_metrics_are_named_eval_task_metric():
    assert logged_metrics(results(0.5, 0.25)) == {
        "eval/mc/acc": 0.5, "eval/mc/acc_norm": 0.25, "eval/arith/exact_match(strict-match)": 0.25}


def test_side_by_side_has_a_column_per_model_and_the_difference_from_the_base():
    table = side_by_side([("base", results(0.5, 0.25)), ("a", results(0.75, 0.25)), ("b", results(0.25, 0.5))],
                         base="base")
    lines = table.splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["task", "metric", "base", "a", "Δ base", "b",
                                                                     "Δ base"]
    acc = [c.strip() for c in lines[2].strip("|").split("|")]
    assert acc == ["mc", "acc", "0.5000 ± 0.0500", "0.7500 ± 0.0500", "+0.2500", "0.2500 ± 0.0500", "-0.2500"]
    assert len(lines) == 2 + 3


def test_without_a_base_there_are_no_difference_columns():
    table = side_by_side([("a", results(0.75, 0.25)), ("b", results(0.25, 0.5))])
    assert "Δ" not in table and "0.7500" in table
