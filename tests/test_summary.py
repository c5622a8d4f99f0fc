"""radlake.summary: the one base of the report records and their JSON-ready form."""

from __future__ import annotations

import ast
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from radlake.summary import Summary, json_ready
from radlake.vocabulary import LabelClass, Split

PACKAGE = Path(__file__).resolve().parents[1] / "lib" / "radlake"


@dataclass(frozen=True)
class _Row:
    label_class: LabelClass
    box: tuple[float, ...]


@dataclass(frozen=True)
class _Report(Summary):
    run_id: str
    root: Path
    rows: list[_Row]
    by_split: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _report() -> _Report:
    rows = [_Row(LabelClass.VERTEBRA, (1.0, 2.5)), _Row(LabelClass.SCHMORL_NODE, ())]
    return _Report("r1", Path("/tmp/out"), rows, {Split.TRAIN.value: 3, "test": 1}, 1.25)


def test_as_dict_is_plain_json_values_in_field_order():
    assert _report().as_dict() == {
        "run_id": "r1",
        "root": "/tmp/out",
        "rows": [{"label_class": "vertebra", "box": [1.0, 2.5]}, {"label_class": "schmorl_node", "box": []}],
        "by_split": {"train": 3, "test": 1},
        "seconds": 1.25,
    }
    assert type(_report().as_dict()["rows"][0]["label_class"]) is str


def test_json_is_written_as_from_asdict():
    report = _report()
    for indent in (None, 2):
        assert json.dumps(report.as_dict(), indent=indent) == json.dumps(asdict(report), indent=indent, default=str)


def test_json_ready_leaves_other_values_alone():
    assert json_ready(None) is None
    assert json_ready(3) == 3
    assert json_ready("a") == "a"
    assert json_ready(_Report) is _Report  # a dataclass type is not a record


def test_every_summary_record_derives_from_summary():
    """Every ``*Summary`` class of the package has the one base (and with it ``as_dict``)."""
    without = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Summary") and path.name != "summary.py":
                if "Summary" not in {ast.unparse(base) for base in node.bases}:
                    without.append(f"{path.relative_to(PACKAGE)}:{node.name}")
    assert without == []
