"""Exit codes shared by every job: 2 for a user error (one line), 1 for anything unexpected."""

import logging

import pytest

from kmeans_dist import cli


def _exit(exc: Exception, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stop:
        with cli.user_errors():
            raise exc
    return stop.value.code, capsys.readouterr().err


@pytest.mark.parametrize("exc", [ValueError("k must be >= 1, got 0\nmore detail"),
                                 FileNotFoundError("input not found: /x.csv")])
def test_user_error_is_one_line_exit_2(capsys, exc):
    code, err = _exit(exc, capsys)
    assert code == 2
    assert err == f"error: {str(exc).splitlines()[0]}\n"


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
