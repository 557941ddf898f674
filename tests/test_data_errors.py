"""Bad data ends in one line naming the file (and line) or the row and value, never a generic traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from hf_fedzo.data import DataError, load_local_files
from hf_fedzo.runs import run_recipe
from hf_fedzo.tasks import load_task
from tests.test_recipes import load_recipe
from tests.tiny_models import build_bpe_tokenizer, roberta_mlm

GOOD = "sentence,label\nit was great,1\nit was terrible,0\n"


@pytest.mark.parametrize(("name", "content", "named"), [
    ("empty.csv", b"", "the file is empty"),
    ("latin1.csv", "sentence,label\nit was tr\xe8s bien,1\n".encode("latin-1"), "line 2 is not UTF-8"),
    ("broken.jsonl", b'{"sentence": "a", "label": 1}\n{"sentence": "b", "label": 0}\n{"sentence": \n',
     "line 3 is not valid JSON"),
    ("header.csv", b"sentence,label\n", "header line but no rows"),
    ("blank.jsonl", b"\n\n  \n", "only blank lines"),
    ("ragged.csv", b"sentence,label\na,1\nb,0,extra,cells\n", "cannot be read as csv"),
])
def test_unreadable_files_are_one_line_naming_the_file(tmp_path: Path, name: str, content: bytes, named: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=named) as info:
        load_local_files({"train": path})
    message = str(info.value)
    assert str(path) in message and "train_file" in message and "\n" not in message


def _task():
    return load_task("sst2", build_bpe_tokenizer(), model_kind="mlm")


def test_an_empty_sentence_is_refused_naming_its_row(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text(GOOD + ",1\nfine,0\n")
    data = load_local_files({"train": tmp_path / "train.csv"})["train"]
    with pytest.raises(DataError, match="row 2: column 'sentence' is empty"):
        _task().preprocess_dataset(data)


def test_a_bad_label_names_its_row_and_value(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text(GOOD + "so so,pos\n")
    data = load_local_files({"train": tmp_path / "train.csv"})["train"]
    with pytest.raises(DataError, match="row 2: label 'pos' in column 'label'"):
        _task().preprocess_dataset(data)
    (tmp_path / "range.csv").write_text(GOOD + "so so,7\n")
    data = load_local_files({"train": tmp_path / "range.csv"})["train"]
    with pytest.raises(DataError, match="row 2: label 7 in column 'label' is out of range"):
        _task().preprocess_dataset(data)


def test_the_none_text_never_reaches_a_prompt() -> None:
    with pytest.raises(ValueError, match="empty"):
        _task().preprocess({"sentence": None, "label": 1})


def test_recipe_prints_a_data_error_as_one_line_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build_bpe_tokenizer().save_pretrained(tmp_path / "tok")
    roberta_mlm().save_pretrained(tmp_path / "tok")  # the recipe loads the model before tokenizing the rows
    (tmp_path / "train.csv").write_text(GOOD + ",1\n")
    (tmp_path / "dev.csv").write_text(GOOD)
    argv = ["--output_dir", str(tmp_path / "out"), "--model_name_or_path", str(tmp_path / "tok"),
            "--train_file", str(tmp_path / "train.csv"), "--validation_file", str(tmp_path / "dev.csv"), "--use_cpu"]
    with pytest.raises(SystemExit) as exit_info:
        run_recipe(load_recipe("roberta_sst2").main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: row 2: column 'sentence' is empty; fill in or remove that row"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("blank", ["", "   "])
def test_federated_clients_refuse_a_blank_sentence_naming_its_row(blank: str) -> None:
    """The federation builds its clients row by row: the task's own row checks still run first."""
    from datasets import Dataset

    from hf_fedzo.federation import FederationConfig, task_clients

    data = Dataset.from_list([{"sentence": "a fine film", "label": 1}, {"sentence": blank, "label": 0},
                              {"sentence": "dull", "label": 0}])
    config = FederationConfig(num_clients=2, clients_per_round=1, partition="iid")
    with pytest.raises(DataError, match="row 1: column 'sentence' is empty"):
        task_clients(_task(), data, config)
