"""Pictures: every one a valid PNG of a real size, from the library and from the train job."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jobutil import describe, listing, run_job_in_process, write_csv
from kmeans_dist import KMeans, plots

IRIS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png(path: Path, min_bytes: int = 5000) -> tuple[int, ...]:
    """Asserts ``path`` is a PNG of more than ``min_bytes`` that decodes to a real picture;
    returns its (height, width, channels)."""
    from matplotlib.image import imread

    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert len(data) > min_bytes, f"{path} has only {len(data)} bytes"
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] >= 200 and image.shape[1] >= 300, image.shape
    assert image[..., :3].std() > 0.05, f"{path} is blank"
    return image.shape


@pytest.fixture(scope="module")
def iris(spark, tmp_path_factory):
    """Iris as a DataFrame and a CSV, with a k=3 model fitted from a slow start (several
    iterations to draw)."""
    from sklearn.datasets import load_iris

    x = load_iris().data
    csv = write_csv(tmp_path_factory.mktemp("plots") / "iris.csv", IRIS, x)
    df = spark.createDataFrame([tuple(map(float, r)) for r in x], IRIS)
    model = KMeans(3, init=x[[0, 1, 2]]).fit(df)
    return df, x, csv, model


def test_fit_pictures_are_valid_pngs(iris, tmp_path):
    df, _, _, model = iris
    assert model.n_iter > 3
    paths = plots.fit_pictures(model, df, str(tmp_path / "plots"))
    assert listing(tmp_path / "plots") == sorted(plots.FIT_PICTURES)
    for path in paths:
        check_png(Path(path))


def test_scatter_of_a_cosine_model_through_a_file_uri(iris, tmp_path):
    df, _, _, _ = iris
    model = KMeans(2, seed=3, distance="cosine").fit(df)
    target = tmp_path / "deep" / "scatter.png"
    plots.scatter(model, df, f"file://{target}", sample_size=100)
    check_png(target)


def test_projection_on_principal_components():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 4)) * [5.0, 2.0, 1.0, 0.5]
    points, centres, explained = plots.project(x, x[:2])
    pca = PCA(2).fit(x)
    np.testing.assert_allclose(explained, pca.explained_variance_ratio_, rtol=1e-9)
    np.testing.assert_allclose(np.abs(points), np.abs(pca.transform(x)), atol=1e-9)
    np.testing.assert_allclose(centres, points[:2], atol=1e-12)
    flat, _, share = plots.project(x[:, :1], x[:1, :1])  # one feature: no second component
    assert np.all(flat[:, 1] == 0) and share.tolist() == [1.0, 0.0]


def test_train_job_writes_its_pictures(iris, tmp_path):
    _, _, csv, _ = iris
    out = tmp_path / "out"
    proc = run_job_in_process("jobs/train.py", "--input", csv, "--k", "3", "--seed", "1",
                              "--output", out)
    assert proc.returncode == 0, describe(proc)
    assert listing(out) == ["_SUCCESS", "assignments", "model.json", "plots", "report.json"]
    assert listing(out / "plots") == sorted(plots.FIT_PICTURES)
    for name in plots.FIT_PICTURES:
        check_png(out / "plots" / name)
    assert f"{out}/plots/" in proc.stdout
