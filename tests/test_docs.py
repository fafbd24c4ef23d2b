"""The op table in docs/split.md is the one the registry generates."""

from pathlib import Path

from click.testing import CliRunner

from onnxsplit.cli import main


def test_op_table_in_docs_matches_registry() -> None:
    table = CliRunner().invoke(main, ["ops", "--markdown"]).output.strip()
    docs = (Path(__file__).parent.parent / "docs" / "split.md").read_text()
    assert table in docs, "regenerate the table with `onnxsplit ops --markdown`"
