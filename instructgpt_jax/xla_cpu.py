"""Enough XLA CPU client threads for collectives across simulated devices.

With several CPU devices in one process (`XLA_FLAGS=--xla_force_host_platform_device_count=8`,
or `JAX_NUM_CPU_DEVICES=8`), every device of a sharded program runs on one thread of the XLA
CPU client's pool, and a collective (an all-reduce) blocks its thread until every device's
thread has arrived. XLA sizes that pool max(cores, devices): on a 2-core machine, exactly one
thread per device. When the next programs are already dispatched (eager ops on sharded arrays
are many small programs in flight), some of those threads are taken by them, the last device of
the collective never gets a thread, and after 40 s XLA aborts the process ("Termination timeout
for `all reduce ...` ... Expected 8 threads to join the rendezvous, but only 7 of them arrived";
`Fatal Python error: Aborted`). docs/reliability.md has a reproducer.

`configure()` gives the pool spare threads through XLA's `PJRT_NPROC` variable before JAX makes
its CPU client; it does nothing with one device, or when you set PJRT_NPROC or NPROC yourself.
"""

from __future__ import annotations

import os
import re

# Threads beyond one per device: 3 per device, at most 64 (a dry run of a large mesh executes
# nothing and needs none). 12 threads for 8 devices sufficed in the reproducer and 9 did not.
SPARE_PER_DEVICE, MAX_SPARE = 3, 64


def simulated_devices(environ: os._Environ | dict[str, str] = os.environ) -> int:
  """The CPU device count the environment asks JAX for (1 when it asks for none)."""
  counts = [
    int(n)
    for n in re.findall(
      r"--xla_force_host_platform_device_count=(\d+)", environ.get("XLA_FLAGS", "")
    )
  ]
  if environ.get("JAX_NUM_CPU_DEVICES", "").strip().isdigit():
    counts.append(int(environ["JAX_NUM_CPU_DEVICES"]))
  return max([1, *counts])


def configure(environ: os._Environ | dict[str, str] = os.environ) -> int | None:
  """Sets PJRT_NPROC for several simulated CPU devices (see the module docstring); returns the
  value set, or None when nothing was set."""
  devices = simulated_devices(environ)
  if devices < 2 or "PJRT_NPROC" in environ or "NPROC" in environ:
    return None
  threads = devices + min(SPARE_PER_DEVICE * devices, MAX_SPARE)
  environ["PJRT_NPROC"] = str(threads)
  return threads
