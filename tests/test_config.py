"""conf/*.yaml profiles: the shipped ones load, and mistakes are one-line errors naming key and file."""

import pytest

from kmeans_dist.config import load_conf


@pytest.mark.parametrize("name", ["local", "cluster"])
def test_shipped_profiles_load(name):
    conf = load_conf(f"conf/{name}.yaml")
    assert all(k.startswith("spark.") and isinstance(v, str) for k, v in conf["spark"].items())
    assert (conf["master"] == "local[*]") == (name == "local")


def test_values_become_spark_strings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("master: local[2]\nspark:\n  spark.ui.enabled: false\n  spark.sql.shuffle.partitions: 4\n")
    assert load_conf(str(path)) == {
        "master": "local[2]",
        "partitions": None,
        "spark": {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "4"},
    }


@pytest.mark.parametrize(
    "text, needle",
    [
        ("masterr: local[2]\n", "unknown key 'masterr'"),
        ("master: 3\n", "'master' must be a str"),
        ("partitions: two\n", "'partitions' must be a int, got 'two'"),
        ("partitions: true\n", "'partitions' must be a int"),
        ("partitions: 0\n", "'partitions' must be >= 1"),
        ("spark:\n  ui.enabled: false\n", "'ui.enabled' must start with 'spark.'"),
        ("spark:\n  spark.x: [1, 2]\n", "'spark.x' must be a single value"),
        ("spark: [1\n", "not valid YAML"),
        ("- a\n- b\n", "must be a mapping"),
    ],
)
def test_bad_conf_names_key_and_file(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        load_conf(str(path))
    msg = str(err.value)
    assert needle in msg and str(path) in msg and "\n" not in msg


def test_missing_conf_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="conf file not found"):
        load_conf(str(tmp_path / "nope.yaml"))


def _args(conf_file=None, partitions=None, master=None):
    import argparse

    return argparse.Namespace(conf_file=conf_file, partitions=partitions, master=master)


def test_partitions_from_file_and_flag_wins(spark, tmp_path, caplog):
    import logging

    from kmeans_dist.cli import start_session

    path = tmp_path / "p.yaml"
    path.write_text("partitions: 3\n")
    with caplog.at_level(logging.INFO, logger="kmeans_dist"):
        assert start_session(_args(str(path)), "t")[1] == 3
    # the job says which file, master and partitions it used
    assert f"config: {path}; master local[2]; partitions 3" in caplog.text
    assert start_session(_args(str(path), partitions=5), "t")[1] == 5
    assert start_session(_args(), "t")[1] == spark.sparkContext.defaultParallelism
    with pytest.raises(ValueError, match="--partitions must be >= 1, got 0"):
        start_session(_args(partitions=0), "t")


def test_settings_never_override_spark_submit_conf():
    from kmeans_dist.config import LOCAL_DEFAULTS, settings_to_apply

    submitted = [("spark.sql.shuffle.partitions", "50"), ("spark.executor.memory", "2g")]
    conf = {"spark.executor.memory": "8g", "spark.ui.enabled": "true"}
    applied = settings_to_apply(conf, submitted, local=False)
    assert "spark.sql.shuffle.partitions" not in applied and "spark.executor.memory" not in applied
    assert applied["spark.ui.enabled"] == "true"  # the file wins over our defaults
    assert applied["spark.executorEnv.OPENBLAS_NUM_THREADS"] == "1"
    assert "spark.driver.memory" not in applied  # no laptop settings on a cluster
    assert settings_to_apply({}, [], local=True)["spark.driver.memory"] == LOCAL_DEFAULTS[
        "spark.driver.memory"]


def test_job_master_defaults_to_local_and_the_flag_wins_over_the_file():
    """What ``python jobs/*.py`` asks Spark for (``cli.start_session`` passes it on): --master,
    else the conf file's master, else local[*]; under spark-submit its own --master (nothing set
    here, even with a profile naming one); nothing for a Spark Connect server."""
    from kmeans_dist.config import job_master, load_conf

    local = load_conf("conf/local.yaml")["master"]
    assert job_master(None, None, None, submitted=False) == "local[*]"
    assert job_master(None, "local[3]", None, submitted=False) == "local[3]"
    assert job_master("local[1]", "local[3]", None, submitted=False) == "local[1]"
    assert job_master("local[1]", local, None, submitted=False) == "local[1]"
    assert job_master(None, local, None, submitted=True) is None
    assert job_master("spark://h:7077", local, None, submitted=True) == "spark://h:7077"
    assert job_master(None, local, "sc://localhost:15002", submitted=False) is None

