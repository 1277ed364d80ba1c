"""Your own data: CSV with a header and a label column, .npy pairs, .npz; every bad file one line,
and data that does not fit the task refused before anything is signed (against a real sequencer)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_cli_tx import PARAMS, account, cli  # the real-sequencer kit of the CLI tests

from mpsnode.fl.data import check_fits, load_dataset

from nodekit import Daemon, make_home


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_a_csv_with_a_header_and_a_label_column(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "a,label,b\n0.5,1,2\n\n-1,0,3.25\n")
    data = load_dataset(path, "--data", "label")
    assert data.x.tolist() == [[0.5, 2.0], [-1.0, 3.25]] and data.y.tolist() == [1, 0] and data.n_classes == 2
    other = write(tmp_path / "e.csv", "f1,f2,class\n1,2,3\n")
    assert load_dataset(other, "--data", "class").y.tolist() == [3]


@pytest.mark.parametrize(
    ("text", "column", "why"),
    [
        ("a,label\n1,0\n2\n", "label", "line 3 has 1 fields, the header 2"),
        ("a,b,label\n1,x,0\n", "label", "line 2, column 'b': 'x' is not a number"),
        ("a,label\nnan,0\n", "label", "not a finite number"),
        ("a,label\n1,-1\n", "label", "label '-1' is not a class number"),
        ("a,label\n1,cat\n", "label", "label 'cat' is not a class number"),
        ("a,y\n1,0\n", "label", "no column 'label' for the labels (columns: a, y)"),
        ("", "label", "empty"),
        ("a,label\n", "label", "no data rows"),
    ],
)
def test_bad_csv_files_are_refused_in_one_line(tmp_path: Path, text: str, column: str, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace("(", r"\(").replace(")", r"\)")) as info:
        load_dataset(write(tmp_path / "bad.csv", text), "--data", column)
    assert "\n" not in str(info.value) and str(info.value).startswith("--data ")


def test_npy_pairs_and_their_refusals(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.ones((3, 4)))
    np.save(tmp_path / "y.npy", np.array([0, 1, 1]))
    np.save(tmp_path / "y2.npy", np.array([0, 1]))
    data = load_dataset(str(tmp_path / "x.npy"), "--data", labels=str(tmp_path / "y.npy"))
    assert data.x.shape == (3, 4) and data.y.tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match="needs its labels: --labels"):
        load_dataset(str(tmp_path / "x.npy"), "--data")
    with pytest.raises(ValueError, match=r"got shapes \(3, 4\) and \(2,\)"):
        load_dataset(str(tmp_path / "x.npy"), "--data", labels=str(tmp_path / "y2.npy"))
    with pytest.raises(ValueError, match=r"--labels goes with an \.npy"):
        load_dataset(write(tmp_path / "d.csv", "a,label\n1,0\n"), "--data", labels=str(tmp_path / "y.npy"))


def test_data_must_fit_the_tasks_arch(tmp_path: Path) -> None:
    data = load_dataset(write(tmp_path / "d.csv", "a,b,label\n1,2,0\n3,4,7\n"), "--data")
    check_fits(data, (2, 5, 8), "--data")
    with pytest.raises(ValueError, match=r"has 2 features; the task's arch \[3, 4\] takes 3"):
        check_fits(data, (3, 4), "--data")
    with pytest.raises(ValueError, match=r"label 7 \(sample 1\) is outside the task's 4 outputs \(0..3\)"):
        check_fits(data, (2, 4), "--data")


def test_a_client_whose_data_does_not_fit_signs_nothing(tmp_path: Path, daemons: list) -> None:
    make_home(tmp_path, clients=3, params=PARAMS)
    node = Daemon(tmp_path)
    daemons.append(node.start())
    created = cli(
        node, "client", "create-task", "--from", "user", "--digits-clients", "6", "--join-blocks", "2000"
    )
    assert created.returncode == 0, created.stderr
    task = json.loads(created.stdout)["task_id"]
    bad_labels = write(
        tmp_path / "c.csv", ",".join(f"p{i}" for i in range(64)) + ",label\n" + ",".join(["0"] * 64) + ",12\n"
    )
    wrong_width = write(tmp_path / "w.csv", "a,b,label\n1,2,0\n")
    for path, why in (
        (bad_labels, "label 12 (sample 0) is outside the task's 10 outputs"),
        (wrong_width, "has 2 features"),
    ):
        done = cli(node, "client", "run", "--from", "client-0", "--task", str(task), "--data", path)
        assert done.returncode != 0 and why in done.stderr and done.stderr.count("\n") == 1, done.stderr
        assert "Traceback" not in done.stderr
    assert account(node, "client-0")["nonce"] == 0 and account(node, "client-0")["pending_txs"] == 0
    ragged = write(tmp_path / "r.csv", "a,label\n1\n")
    done = cli(node, "client", "run", "--from", "client-0", "--task", str(task), "--data", ragged)
    assert done.returncode == 2 and "line 2 has 1 fields" in done.stderr


def test_create_task_takes_its_validation_set_from_the_users_file(tmp_path: Path, daemons: list) -> None:
    from mpsnode.fl.data import digits_split

    make_home(tmp_path, clients=3, params=PARAMS)
    node = Daemon(tmp_path)
    daemons.append(node.start())
    val = digits_split(6, None, 0).validation
    header = ",".join(f"px{i}" for i in range(64)) + ",digit\n"
    rows = "".join(",".join(f"{v:g}" for v in x) + f",{y}\n" for x, y in zip(val.x, val.y, strict=True))
    good = write(tmp_path / "val.csv", header + rows)
    created = cli(node, "client", "create-task", "--from", "user", "--validation", good, "--label-column", "digit",
                  "--min-clients", "3", "--byzantine-f", "0", "--join-blocks", "50")  # fmt: skip
    assert created.returncode == 0, created.stderr
    out = json.loads(created.stdout)
    assert out["validation_samples"] == len(val)
    assert out["validation_classes"] == np.bincount(val.y, minlength=10).tolist()
    nonce = account(node, "user")["nonce"]
    bad = [
        (write(tmp_path / "ragged.csv", header + rows.splitlines()[0] + ",9\n"), "line 2 has 66 fields"),
        (write(tmp_path / "big.csv", header + "9," + "0," * 63 + "1\n"), "beyond int16"),
        (write(tmp_path / "narrow.csv", "a,digit\n0.5,0\n0.25,1\n"), "has 1 features, the arch expects 64"),
        (
            write(tmp_path / "labels.csv", header + rows.splitlines()[0].rsplit(",", 1)[0] + ",10\n"),
            "11 classes",
        ),
    ]
    for path, why in bad:
        done = cli(node, "client", "create-task", "--from", "user", "--validation", path, "--label-column",
                   "digit", "--min-clients", "3", "--byzantine-f", "0")  # fmt: skip
        assert done.returncode != 0 and why in done.stderr and done.stderr.count("\n") == 1, (
            path,
            done.stderr,
        )
        assert "Traceback" not in done.stderr
    assert account(node, "user")["nonce"] == nonce and account(node, "user")["pending_txs"] == 0
