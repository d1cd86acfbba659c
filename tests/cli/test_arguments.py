"""Arguments checked once, before any work, the same way on every path: outputs that are one file, unknown models on
the matrix path, a precision a runtime lacks, an option a command does not know, names the file system refuses."""
import json

import pytest

from edgevit.cli.main import main as cli


def test_two_outputs_of_one_command_that_are_one_file_are_refused(tmp_path, refused):
    out = tmp_path / "r.png"
    refused(["bench", "--runtime", "all", "--json", str(out), "--plot", str(out)], "--plot", "--json")
    refused(["bench", "--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.json")], "--csv",
            "--json")
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing written, no lock left


def test_an_unknown_model_is_refused_before_any_work_on_every_bench_path(tmp_path, refused):
    for runtime in ("eager", "onnxruntime", "all"):
        refused(["bench", "--runtime", runtime, "--models", "nosuchnet", "--json",
                         str(tmp_path / f"{runtime}.json")], "--models", "nosuchnet")
    assert not list(tmp_path.iterdir())


def test_precision_all_says_what_the_runtime_lacks(capsys):
    with pytest.warns(UserWarning, match=r"--runtime eager has fp32 only; .*int8.* not run"):
        assert cli(["bench", "--runtime", "eager", "--precision", "all", "--models", "edgevit_xxs", "--edgevit-form",
                    "fused", "--img-size", "32", "--runs", "1", "--warmup", "0", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["precision"] for r in doc["results"]] == ["fp32"]


def test_an_unknown_option_points_to_its_own_commands_help(refused):
    refused(["export", "--format", "onnx", "-o", "x.onnx", "--nosuch"], "edgevit export: error",
            "--nosuch", "see edgevit export --help")
    refused(["segment", "train", "--nosuch"], "see edgevit segment train --help")


def test_a_long_output_name_is_written_and_one_too_long_is_one_line(tmp_path, refused):
    legal = tmp_path / ("a" * 248 + ".pt")  # 251 bytes: its lock and temporary beside it are longer
    assert cli(["export", "--format", "torchscript", "--img-size", "32", "-o", str(legal)]) == 0
    assert legal.is_file() and [p.name for p in tmp_path.iterdir()] == [legal.name]
    too_long = tmp_path / ("b" * 260 + ".pt")
    refused(["export", "--format", "torchscript", "-o", str(too_long)], "-o", "over the 255 bytes")
    refused(["data", "digits", "--out", str(tmp_path / ("c" * 256))], "--out", "over the")
    assert [p.name for p in tmp_path.iterdir()] == [legal.name]
