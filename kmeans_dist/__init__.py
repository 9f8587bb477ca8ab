"""kmeans-dist: exact Lloyd k-means on Apache Spark, from local[*] to a cluster."""

from kmeans_dist.config import get_session
from kmeans_dist.estimator import KMeans
from kmeans_dist.model import KMeansModel

__all__ = ["KMeans", "KMeansModel", "get_session"]
__version__ = "0.1.0"
