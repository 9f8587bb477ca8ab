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
        "spark": {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "4"},
    }


@pytest.mark.parametrize(
    "text, needle",
    [
        ("masterr: local[2]\n", "unknown key 'masterr'"),
        ("master: 3\n", "'master' must be a str"),
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
