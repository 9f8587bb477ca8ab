"""Exit codes shared by every job: 2 for a user error (one line), 1 for anything unexpected."""

import logging

import pytest

from kmeans_dist import cli
from kmeans_dist.errors import MissingInput, UserError, cleanup


def _exit(exc: Exception, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stop:
        with cli.user_errors():
            raise exc
    return stop.value.code, capsys.readouterr().err


@pytest.mark.parametrize("exc", [UserError("k must be >= 1, got 0\nmore detail"),
                                 MissingInput("input not found: /x.csv")])
def test_user_error_is_one_line_exit_2(capsys, exc):
    code, err = _exit(exc, capsys)
    assert code == 2
    assert err == f"error: {str(exc).splitlines()[0]}\n"


def _caught(call) -> Exception:
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the error the library itself raised
        return exc
    raise AssertionError(f"{call} raised nothing")


def _internal_errors(spark) -> dict:
    """ValueErrors and a FileNotFoundError raised by PySpark, pyarrow and Python themselves (not
    made up by the test): none of them is the user's fault."""
    import pyarrow as pa

    return {
        "pyspark": _caught(lambda: spark.createDataFrame([])),  # PySparkValueError
        "pyarrow": _caught(lambda: pa.array(["x"], type=pa.float64())),  # ArrowInvalid
        "python": _caught(lambda: open("/nonexistent-kmeans-dist/x")),  # unchecked file
    }


@pytest.mark.parametrize("source", ["pyspark", "pyarrow", "python"])
def test_internal_value_errors_are_unexpected_exit_1(spark, capsys, caplog, source):
    exc = _internal_errors(spark)[source]
    assert isinstance(exc, (ValueError, FileNotFoundError)) and not isinstance(exc, UserError)
    with caplog.at_level(logging.ERROR, logger="kmeans_dist"):
        code, err = _exit(exc, capsys)
    assert code == 1
    assert "Traceback" in caplog.text
    assert err.splitlines()[-1].startswith(f"error: unexpected {type(exc).__name__}: ")


def test_cleanup_failure_never_replaces_the_first_error(caplog):
    def failing_release():
        raise RuntimeError("release failed")

    with caplog.at_level(logging.ERROR, logger="kmeans_dist"):
        with pytest.raises(UserError, match="the real error"):
            with cleanup(failing_release, "releasing the test transport"):
                raise UserError("the real error")
    assert "releasing the test transport failed" in caplog.text
    assert "RuntimeError: release failed" in caplog.text  # with its traceback
    # with no earlier error, a failing release is an error of its own, not swallowed
    with pytest.raises(RuntimeError, match="release failed"):
        with cleanup(failing_release, "releasing the test transport"):
            pass
    released = []
    with pytest.raises(KeyError):
        with cleanup(lambda: released.append(True), "releasing"):
            raise KeyError("x")
    assert released == [True]


def test_release_failure_after_a_real_fit_error_keeps_its_exit_code(spark, monkeypatch, capsys,
                                                                   caplog):
    """A fit that fails on invalid rows (exit 2) while its transport's release fails too: the
    invalid rows are reported, with exit 2, and the release failure is logged."""
    from kmeans_dist import KMeans, transport
    from kmeans_dist.estimator import InvalidRows

    real_make, released = transport.make, []

    def make_failing_release(*args, **kwargs):
        made = real_make(*args, **kwargs)
        real_release = made.release

        def release():
            real_release()  # free what the fit holds, then fail as a lost cluster would
            released.append(True)
            raise RuntimeError("could not release the transport")
        made.release = release
        return made

    monkeypatch.setattr(transport, "make", make_failing_release)
    df = spark.createDataFrame([(1.0, 2.0), (float("nan"), 1.0), (5.0, 8.0)], ["a", "b"])
    with caplog.at_level(logging.ERROR, logger="kmeans_dist"):
        with pytest.raises(SystemExit) as stop:
            with cli.user_errors():
                KMeans(2, seed=1, transport="driver").fit(df)
    err = capsys.readouterr().err
    assert released == [True]
    assert stop.value.code == 2, err
    assert err.startswith("error: 1 input row has a null, NaN or infinite feature value"), err
    assert "could not release the transport" in caplog.text and "that error is kept" in caplog.text
    assert isinstance(stop.value.__context__, InvalidRows)  # the fit's own error, not the release's




def test_unexpected_error_exit_1_traceback_in_log(capsys, caplog):
    with caplog.at_level(logging.ERROR, logger="kmeans_dist"):
        code, err = _exit(RuntimeError("executor lost\nJava stack..."), capsys)
    assert code == 1
    # the traceback goes to the log; the last line says what happened in one line
    assert "Traceback" in caplog.text and "RuntimeError: executor lost" in caplog.text
    assert err.splitlines()[-1] == "error: unexpected RuntimeError: executor lost (traceback above)"


def test_relative_output_paths_are_checked_up_to_the_working_directory(spark):
    """`make run` writes to a relative path (out/iris): its parents are walked up to the top,
    which for a relative path is the working directory (Hadoop's empty parent), on both
    filesystems (classic Hadoop, and pyarrow as on Spark Connect)."""
    from kmeans_dist import io

    for fs in (io._HadoopFS(spark), io._ArrowFS()):
        assert fs.parent("no-such-dir-kmeans/run") is not None
        top = fs.parent(fs.parent("no-such-dir-kmeans/run"))
        assert top is None or fs.kind(top) == "dir", (fs, top)
    io.check_output_dir("no-such-dir-kmeans/run", overwrite=False)  # no error, nothing written
    assert not io.exists("no-such-dir-kmeans")


class _Built(Exception):
    """Raised by a stand-in KMeans: the job got as far as building its estimator."""


@pytest.mark.parametrize("job, args", [
    ("train", ["--input", "in.csv", "--k", "3", "--output", "out"]),
    ("segment", ["--input", "in.csv", "--k", "3", "--output", "out"]),
    ("elbow", ["--input", "in.csv", "--k-min", "2", "--k-max", "3", "--output", "out"]),
])
def test_fitting_jobs_take_dtype_to_the_estimator(monkeypatch, job, args):
    """--dtype (cli.add_engine_flags) reaches the KMeans each fitting job builds; float64 when
    not given. No Spark: the stand-in estimator stops the job where it is built."""
    import importlib

    module = importlib.import_module(f"kmeans_dist.{job}")
    seen = []

    def built(*_, **kw):
        seen.append(kw["dtype"])
        raise _Built

    monkeypatch.setattr(module, "KMeans", built)
    monkeypatch.setattr(cli, "start_session", lambda a, name: (None, 2))
    monkeypatch.setattr(module.io, "check_output_dir", lambda *a: None)
    for extra in ([], ["--dtype", "float32"]):
        with pytest.raises(_Built):
            module.run(module.parser().parse_args(args + extra))
    assert seen == ["float64", "float32"]
