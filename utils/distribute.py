"""Data-parallel training with tf.distribute, in the project's graph mode.

    cluster = cluster_from_tf_config(os.environ.get(TF_CONFIG_VAR))  # None: one machine
    parallel = start(replicas=2, batch_size=16, cluster=cluster, connect_timeout_secs=120)
    with parallel.scope():
        per_replica = parallel.run(tower_fn, images, labels)  # built once per replica; in it
        # parallel.local_part(images): this replica's part of the batch
        loss = parallel.sum(per_replica["loss"])             # over replicas (and workers)
    sess = tf.Session(parallel.session_target, config=parallel.session_config(config))

One replica on one machine is `ONE_DEVICE`, which runs the same calls with no strategy
(the graph of an ordinary run). Otherwise:
- one machine, N replicas: `MirroredStrategy` over the first N GPUs, or over N logical
  CPU devices on a machine without GPUs (at most one per core);
- several machines (TF_CONFIG names the cluster): the v1 `MultiWorkerMirroredStrategy`,
  N replicas per worker (GPUs; one per worker on CPU). Each worker runs a
  `tf.distribute.Server` and points its Session at it; collective ops carry the
  all-reduce between workers, and every variable's initial value is broadcast from the chief.

What makes it work in graph mode: `call_for_each_replica` builds replica 0 under the
caller's names and replica k under `replica_k/`, reusing one MirroredVariable per
variable; a tf.compat.v1 optimizer's `apply_gradients` in a replica context sums the
replicas' gradients (an all-reduce) and applies the sum once to every copy. So each
replica's loss is its share of the global batch's loss (see `sum_over_replicas`).
"""
import contextlib
import dataclasses
import json
import os
import re
import socket
import time

from utils.errors import SegMentorError, first_line
from utils.tfcompat import tf, tf2

TF_CONFIG_VAR = "TF_CONFIG"
# A worker waits this long by default for every other worker's server to answer: enough
# for a cluster started by hand, one machine after the other.
DEFAULT_CONNECT_TIMEOUT_SECS = 120.0
_PEER_POLL_SECS = 0.5
# Jobs MultiWorkerMirroredStrategy trains with: an optional chief (then it is the chief)
# and workers (else worker 0 is the chief).
_TRAINING_JOBS = ("chief", "worker")
_ADDRESS = re.compile(r"^[^\s:]+:(\d{1,5})$")


# --- The cluster ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Cluster:
    """The machines of a multi-worker run and this process's place among them (TF_CONFIG)."""
    jobs: dict          # {"chief": [address], "worker": [address, ...]}, addresses "host:port"
    task_type: str
    task_index: int

    @property
    def addresses(self):
        """Every task's address, the chief's first."""
        return [address for job in _TRAINING_JOBS for address in self.jobs.get(job, [])]

    @property
    def worker_index(self):
        """0 for the chief, then 1, 2, ... (the order of `addresses`)."""
        return self.addresses.index(self.address)

    @property
    def address(self):
        return self.jobs[self.task_type][self.task_index]

    @property
    def num_workers(self):
        return len(self.addresses)

    @property
    def is_chief(self):
        return self.worker_index == 0


def _tf_config_error(problem):
    return SegMentorError(
        f"{TF_CONFIG_VAR} {problem}; it should look like "
        f'{{"cluster": {{"worker": ["host1:port", "host2:port"]}}, '
        f'"task": {{"type": "worker", "index": 0}}}}')


def cluster_from_tf_config(text):
    """The Cluster described by a TF_CONFIG value, None for an unset or empty one.

    SegMentorError (one line saying what is wrong) for anything else that does not
    describe a chief/worker cluster holding this task.
    """
    if not text or not text.strip():
        return None
    try:
        config = json.loads(text)
    except ValueError as err:
        raise _tf_config_error(f"is not valid JSON ({err})") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict) or \
            not isinstance(config.get("task"), dict):
        raise _tf_config_error('needs a "cluster" object and a "task" object')
    jobs = config["cluster"]
    unknown = sorted(set(jobs) - set(_TRAINING_JOBS))
    if unknown:
        raise _tf_config_error(f"has job {unknown[0]!r}: data-parallel training uses "
                               f"{' and '.join(repr(job) for job in _TRAINING_JOBS)} only")
    for job, addresses in jobs.items():
        if not isinstance(addresses, list) or not addresses:
            raise _tf_config_error(f'lists no addresses for "{job}"')
        for address in addresses:
            match = _ADDRESS.match(address) if isinstance(address, str) else None
            if not match or not 0 < int(match[1]) < 65536:
                raise _tf_config_error(f'has {address!r} in "{job}", not host:port')
    if len(jobs.get("chief", [])) > 1:
        raise _tf_config_error('lists more than one "chief"')
    every = [address for addresses in jobs.values() for address in addresses]
    if len(set(every)) != len(every):
        raise _tf_config_error("lists an address twice")
    task_type, task_index = config["task"].get("type"), config["task"].get("index")
    if task_type not in jobs:
        raise _tf_config_error(f'has task type {task_type!r}, not a job of its "cluster"')
    if not isinstance(task_index, int) or isinstance(task_index, bool) or \
            not 0 <= task_index < len(jobs[task_type]):
        raise _tf_config_error(f'has task index {task_index!r}; "{task_type}" has '
                               f"{len(jobs[task_type])} address(es)")
    return Cluster({job: list(jobs[job]) for job in _TRAINING_JOBS if job in jobs},
                   task_type, task_index)


def wait_for_peers(cluster, timeout_secs):
    """Return once every other task's server accepts connections; SegMentorError (naming
    the first one missing) after `timeout_secs`. Without it a collective op would wait
    for a missing worker forever."""
    deadline = time.monotonic() + timeout_secs
    for address in cluster.addresses:
        if address == cluster.address:
            continue
        host, port = address.rsplit(":", 1)
        while True:
            try:
                with socket.create_connection((host, int(port)), timeout=_PEER_POLL_SECS):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    role = "the chief" if address == cluster.addresses[0] else "worker"
                    raise SegMentorError(
                        f"worker {cluster.worker_index} ({cluster.address}) could not reach "
                        f"{role} {address} within {timeout_secs:g} s: start every worker with "
                        f"the same {TF_CONFIG_VAR} cluster, check the address and firewall, or "
                        f"raise --connect_timeout") from None
                time.sleep(_PEER_POLL_SECS)


# --- Local devices -----------------------------------------------------------------------

def local_devices(replicas):
    """Names of the devices `replicas` replicas of this process run on: the first GPUs,
    or on a machine without GPUs logical CPU devices, made now (before the first Session,
    the moment TensorFlow fixes its devices). SegMentorError when there are too few."""
    gpus = tf2.config.list_physical_devices("GPU")
    if gpus:
        if replicas > len(gpus):
            raise SegMentorError(f"--replicas {replicas} needs {replicas} GPUs, but "
                                 f"{len(gpus)} are visible: lower --replicas (or set "
                                 f"CUDA_VISIBLE_DEVICES)")
        return [f"/device:GPU:{index}" for index in range(replicas)]
    cores = os.cpu_count() or 1
    if replicas > cores:
        raise SegMentorError(f"--replicas {replicas} needs {replicas} devices, but this "
                             f"machine has no GPU and {cores} CPU cores (one replica per "
                             f"core at most): lower --replicas to {cores} or less")
    if replicas > 1:
        cpu = tf2.config.list_physical_devices("CPU")[0]
        try:
            tf2.config.set_logical_device_configuration(
                cpu, [tf2.config.LogicalDeviceConfiguration()] * replicas)
        except RuntimeError:  # TensorFlow already fixed its devices in this process
            configured = len(tf2.config.list_logical_devices("CPU"))
            if configured < replicas:
                raise SegMentorError(f"--replicas {replicas} needs {replicas} CPU devices, "
                                     f"but this process already started TensorFlow with "
                                     f"{configured}; run it in a fresh process") from None
    return [f"/device:CPU:{index}" for index in range(replicas)]


def check_batch_split(batch_size, num_replicas, num_workers):
    """SegMentorError unless the global batch splits evenly over every replica."""
    if batch_size % num_replicas:
        setup = (f"{num_workers} workers x {num_replicas // num_workers} replicas"
                 if num_workers > 1 else f"{num_replicas} replicas")
        raise SegMentorError(f"--batch_size {batch_size} does not split evenly over "
                             f"{num_replicas} replicas ({setup}): give a multiple of "
                             f"{num_replicas}")


# --- The replicas ---------------------------------------------------------------------------

class _OneDevice:
    """One replica, no strategy: the calls of `DataParallel` on the ordinary graph."""
    num_replicas = num_workers = 1
    worker_index = 0
    is_chief = True
    session_target = ""

    def scope(self):
        return contextlib.nullcontext()

    def run(self, fn, *args):
        return fn(*args)

    def local_part(self, batch):
        return batch

    def worker_share(self):
        return tf.constant(1.0)

    def sum(self, value):
        return value

    def new_value(self, value):
        return value

    def copy_first_replica(self):
        return tf.no_op()

    def session_config(self, config):
        return config

    def describe(self):
        return "1 device"


ONE_DEVICE = _OneDevice()


class DataParallel:
    """A tf.distribute strategy and what this process needs to train under it.

    num_replicas counts every replica of the cluster; this process runs
    `num_replicas // num_workers` of them. Build the graph inside `scope()`.
    """

    def __init__(self, strategy, devices, cluster=None, server=None):
        self.strategy, self.devices, self.cluster, self._server = strategy, devices, cluster, server
        self.num_workers = cluster.num_workers if cluster else 1
        self.worker_index = cluster.worker_index if cluster else 0
        self.is_chief = cluster.is_chief if cluster else True
        self.num_replicas = strategy.num_replicas_in_sync
        self.session_target = server.target if server else ""

    def scope(self):
        return self.strategy.scope()

    def run(self, fn, *args):
        """fn(*args) built once per replica, per-replica values unwrapped; per-replica results."""
        return self.strategy.extended.call_for_each_replica(fn, args=args)

    def _local_replica(self):
        # The context's id counts the replicas of every worker; the workers' are in a row.
        context = tf.distribute.get_replica_context()
        return context.replica_id_in_sync_group % len(self.devices)

    def local_part(self, batch):
        """Inside `run`: this replica's part of `batch` [B, ...] (B this worker's batch),
        [B / local replicas, ...], replica r taking part r."""
        part_size = tf.shape(batch)[0] // len(self.devices)
        return batch[self._local_replica() * part_size:][:part_size]

    def worker_share(self):
        """Inside `run`: float32 1 / workers on each worker's first replica, 0 on the others."""
        first = tf.equal(self._local_replica(), 0)
        return tf.cast(first, tf.float32) / self.num_workers

    def sum(self, value):
        """A per-replica value summed over every replica of the cluster."""
        return self.strategy.reduce(tf2.distribute.ReduceOp.SUM, value, axis=None)

    def new_value(self, value):
        """One tensor out of a per-replica result whose replicas agree (the new global
        step): replica 0's, once every local replica's is computed."""
        results = self.strategy.experimental_local_results(value)
        with tf.control_dependencies(results):
            return tf.identity(results[0])

    def copy_first_replica(self):
        """An op setting every local copy of every variable to the first replica's.

        Run it after a restore: tf.train.Saver restores a MirroredVariable's first
        copy only (the initializers give every copy the first one's value)."""
        copies = [copy.assign(variable.values[0]) for variable in tf.global_variables()
                  if isinstance(variable, tf2.distribute.DistributedValues)
                  for copy in variable.values[1:]]
        return tf.group(*copies, name="copy_first_replica")

    def session_config(self, config):
        """`config` (a ConfigProto) as the strategy needs it: the collective-op settings of
        a worker, the logical CPU devices of a machine without GPUs."""
        config = self.strategy.update_config_proto(config) if self.cluster else config
        cpus = sum(device.startswith("/device:CPU") for device in self.devices)
        if cpus:
            config.device_count["CPU"] = cpus
        return config

    def describe(self):
        kind = "GPU" if "GPU" in self.devices[0] else "CPU"
        local = f"{len(self.devices)} {kind} replica{'s' * (len(self.devices) > 1)}"
        if not self.cluster:
            return local
        return (f"worker {self.worker_index} of {self.num_workers}"
                f"{' (chief)' if self.is_chief else ''}, {local} each, "
                f"{self.num_replicas} in all")


def start(replicas, batch_size, cluster=None,
          connect_timeout_secs=DEFAULT_CONNECT_TIMEOUT_SECS):
    """ONE_DEVICE, or the DataParallel of `replicas` local replicas in `cluster` (None:
    this machine alone), checked against the global `batch_size` first. A worker starts
    its server here and waits for the others."""
    if cluster is None and replicas == 1:
        return ONE_DEVICE
    devices = local_devices(replicas)
    num_workers = cluster.num_workers if cluster else 1
    check_batch_split(batch_size, replicas * num_workers, num_workers)
    if cluster is None:
        return DataParallel(tf2.distribute.MirroredStrategy(devices), devices)
    if replicas > 1 and "CPU" in devices[0]:
        raise SegMentorError(f"--replicas {replicas}: on CPU each worker is one replica "
                             f"(TensorFlow's multi-worker strategy uses one CPU device per "
                             f"worker); drop --replicas or use GPUs")
    spec = tf.train.ClusterSpec(cluster.jobs)
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        spec, task_type=cluster.task_type, task_id=cluster.task_index,
        num_accelerators={"GPU": replicas} if "GPU" in devices[0] else None, rpc_layer="grpc")
    strategy = tf.distribute.experimental.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    try:
        server = tf.distribute.Server(spec, job_name=cluster.task_type,
                                      task_index=cluster.task_index,
                                      config=strategy.update_config_proto(tf.ConfigProto()),
                                      start=True)
    except (tf.errors.OpError, RuntimeError) as err:
        raise SegMentorError(f"worker {cluster.worker_index} cannot serve at "
                             f"{cluster.address} ({first_line(err)}): is the port in use "
                             f"or the host not this machine?") from None
    wait_for_peers(cluster, connect_timeout_secs)
    return DataParallel(strategy, devices, cluster, server)


def sum_over_replicas(value):
    """`value` summed over the replicas of the current replica context (itself outside
    tf.distribute): what a replica divides its part of the loss by to make the global
    batch's mean, so the summed gradients equal those of one device on the whole batch."""
    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return value
    return tf.distribute.get_replica_context().all_reduce(tf2.distribute.ReduceOp.SUM, value)


@contextlib.contextmanager
def lost_worker_errors(parallel, run_dir):
    """A collective op failing because another worker is gone, as one SegMentorError line."""
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.AbortedError,
            tf.errors.CancelledError) as err:
        if parallel.num_workers == 1:
            raise
        where = f"--resume {run_dir}" if run_dir else "--resume <the chief's run folder>"
        raise SegMentorError(f"worker {parallel.worker_index} lost the cluster "
                             f"({first_line(err)}): a worker stopped; the chief's last "
                             f"checkpoint is kept: restart every worker with {where}") from None
