"""How the engine reaches the data: one small interface, one implementation per Spark flavour.

A transport holds the cached blocks of one fit and runs a task function from ``kmeans_dist.tasks``
on every partition, returning one result per partition in partition order. The engine and the
inits only ever call ``run``; everything Spark-specific (caching, broadcast, jobs) stays behind it.
"""

from kmeans_dist.transport.base import Transport
from kmeans_dist.transport.local_files import LocalFilesTransport
from kmeans_dist.transport.rdd import RDDTransport
from kmeans_dist.transport.resident import ResidentTransport

#: transport names accepted by ``KMeans(transport=...)``
TRANSPORTS = {"resident": ResidentTransport, "files": LocalFilesTransport, "rdd": RDDTransport}

__all__ = ["Transport", "RDDTransport", "LocalFilesTransport", "ResidentTransport", "TRANSPORTS"]
