# Two commands: `make run` (install + train on the bundled iris data), `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
OUT    ?= out/iris

export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))

.PHONY: run test bench package package-env install check-java clean

$(PY):
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "kmeans-dist needs Python >= 3.10, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	@# a venv left half-made by an interrupted run has no pip: make it again
	@$(PY) -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench,connect]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

check-java:
	@command -v java >/dev/null 2>&1 || { echo "error: Java 17+ is required by Spark and was not found on PATH (install e.g. openjdk-17-jre-headless)"; exit 1; }

run: check-java install
	$(PY) jobs/train.py --conf conf/local.yaml --input data/iris.csv --k 3 --seed 42 --output $(OUT) --overwrite --label-col species

# five pytest processes side by side (most of the time is spent waiting on JVMs, timeouts and
# frozen hosts, not computing): the classic suite; the real-cluster suites (standalone clusters,
# a memory cgroup), the liveness ones apart; Spark Connect (a process holds a classic or a
# Connect session, not both); the output commits (jobs killed mid-commit, a local S3 server).
# The other four print their output after the first.
LOGS := $(VENV)/test-logs
PYTEST := $(PY) -m pytest -q -p no:cacheprovider
# the classes a Spark application loads, archived once per install and JDK for every test JVM
# to map (class-data sharing, tests/spark_classes.py: 2.7 s of CPU less per JVM started)
CDS := $(VENV)/spark-classes-$(shell java -version 2>&1 | cksum | cut -d' ' -f1).jsa
# every JVM the tests start is short-lived: C1 only and the serial collector spend less CPU on
# JIT and GC threads than they save (a quarter off the job-heavy test modules on 2 cores); a JVM
# that cannot use the archive (another class path: spark-submit's launcher) says nothing of it
test: export JDK_JAVA_OPTIONS := -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
	-XX:SharedArchiveFile=$(abspath $(CDS)) -Xlog:cds*=off
test: check-java install
	@mkdir -p $(LOGS)
	@# numba's machine code compiled once into its cache, before five processes would each
	@# compile it; meanwhile Spark's classes archived (without the archive the tests run slower)
	@test -f $(CDS) || { rm -f $(VENV)/spark-classes-*.jsa; \
	  $(PY) tests/spark_classes.py $(CDS) > $(LOGS)/spark-classes.log 2>&1 \
	  || echo "note: no archive of Spark's classes (see $(LOGS)/spark-classes.log): the tests run without it"; } & cds=$$!; \
	$(PY) -c "from kmeans_dist import kernels; kernels.warm_up()"; numba=$$?; wait $$cds; test $$numba = 0
	@$(PYTEST) -m cluster --ignore=tests/test_liveness_cluster.py > $(LOGS)/cluster.log 2>&1 & cl=$$!; \
	( $(PYTEST) tests/test_liveness_cluster.py > $(LOGS)/liveness.log 2>&1; a=$$?; \
	  $(PYTEST) tests/test_liveness.py > $(LOGS)/liveness-local.log 2>&1; b=$$?; \
	  test $$a = 0 -a $$b = 0 ) & lv=$$!; \
	$(PYTEST) tests/connect > $(LOGS)/connect.log 2>&1 & co=$$!; \
	$(PYTEST) -m commit > $(LOGS)/commit.log 2>&1 & cm=$$!; \
	$(PYTEST) -m "not cluster and not commit" --ignore=tests/test_liveness.py; main=$$?; \
	wait $$cl; cluster=$$?; wait $$lv; liveness=$$?; wait $$co; connect=$$?; wait $$cm; commits=$$?; \
	echo "--- real clusters (pytest -m cluster) ---"; cat $(LOGS)/cluster.log; \
	echo "--- liveness: real clusters (pytest tests/test_liveness_cluster.py), then local mode (pytest tests/test_liveness.py) ---"; \
	cat $(LOGS)/liveness.log $(LOGS)/liveness-local.log; \
	echo "--- Spark Connect (pytest tests/connect) ---"; cat $(LOGS)/connect.log; \
	echo "--- output commits (pytest -m commit) ---"; cat $(LOGS)/commit.log; \
	test $$main = 0 -a $$cluster = 0 -a $$liveness = 0 -a $$connect = 0 -a $$commits = 0

# Speed against Spark MLlib and scikit-learn (not part of make test): writes BENCHMARKS.md
bench: check-java install
	$(PY) bench/run.py --json bench/results.json

# dist/kmeans_dist.zip for spark-submit --py-files (pure Python, built from the sources)
package: install
	$(PY) -m kmeans_dist.packaging zip dist/kmeans_dist.zip

# dist/kmeans_dist_env.tar.gz for --archives, when executors lack numpy/pyarrow/numba (venv-pack)
package-env: install
	$(PY) -m kmeans_dist.packaging env dist/kmeans_dist_env.tar.gz

clean:
	rm -rf out dist .pytest_cache
