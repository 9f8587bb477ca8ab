"""What the cluster can run at once, and whether a job is making progress: Spark's scheduler as the
resident transport needs to see it (every partition's task must run at the same time).

Under dynamic allocation (YARN's and EMR's default) a cluster has the executors it has asked for,
not those it may get: the slots that count are those it can get (``maxExecutors`` x task slots per
executor, within ``spark.cores.max``), and the executors come when tasks wait for them.
"""

from __future__ import annotations


def task_slots(sc) -> int | None:
    """How many tasks the executors registered now can run at once (None if Spark does not say)."""
    try:
        jsc = sc._jsc.sc()
        return int(jsc.maxNumConcurrentTasks(
            jsc.resourceProfileManager().defaultResourceProfile()))
    except Exception:  # noqa: BLE001 - a private Spark API: treat as unknown
        return None


def obtainable_slots(sc) -> int | None:
    """How many tasks the application can run at once, counting executors dynamic allocation may
    still add; None where that is unbounded or unknown (then only waiting tells)."""
    now = task_slots(sc)
    conf = sc.getConf()
    if conf.get("spark.dynamicAllocation.enabled", "false").lower() != "true":
        return now
    cpus = max(1, int(conf.get("spark.task.cpus", "1")))
    cores, most = conf.get("spark.executor.cores"), conf.get("spark.dynamicAllocation.maxExecutors")
    if cores is None or most is None:
        return None
    can = int(most) * (int(cores) // cpus)
    cap = conf.get("spark.cores.max")
    if cap is not None:
        can = min(can, int(cap) // cpus)
    return max(can, now or 0)


def running_tasks(sc) -> int | None:
    """Tasks the scheduler runs right now, in the whole application (None if Spark does not
    say). The scheduler's own count: the status store's per-stage counts are written lazily
    (tasks that start within ``spark.ui.liveUpdate.period`` of their stage show as 0 until an
    event after), which would make a running stage look idle."""
    try:
        by_executor = sc._jvm.scala.jdk.javaapi.CollectionConverters.asJava(
            sc._jsc.sc().taskScheduler().runningTasksByExecutors())
        return sum(int(n) for n in by_executor.values())
    except Exception:  # noqa: BLE001 - a private Spark API: treat as unknown
        return None


def group_progress(sc, group: str) -> tuple[int, int]:
    """(running tasks, tasks that returned) over the active stages of the jobs in ``group``; the
    returned ones counted in the last stage of the group's last job only (where the job's own
    tasks run: a resident task that returns early could not serve)."""
    tracker = sc.statusTracker()
    active = set(tracker.getActiveStageIds())
    running = ended = 0
    jobs = sorted(tracker.getJobIdsForGroup(group))
    for i, job in enumerate(jobs):
        info = tracker.getJobInfo(job)
        if info is None:
            continue
        for stage in info.stageIds:
            st = tracker.getStageInfo(stage) if stage in active else None
            if st is None:
                continue
            running += st.numActiveTasks
            if i == len(jobs) - 1 and stage == max(info.stageIds):
                ended += st.numCompletedTasks
    scheduled = running_tasks(sc)
    return (running if scheduled is None else max(running, scheduled)), ended
