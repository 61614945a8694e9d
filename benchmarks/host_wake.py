"""What waking an idle process costs on this host (no Yap code involved).

Two processes on two cores play ping-pong over pipes, 200 round trips: the
responder either blocks in read() (parked, as an idle server worker waits in
epoll) or polls without blocking (spinning), and the pinger either sends back
to back or sleeps 50 ms before each ping (a turn after silence). Prints the
round trip's p50/p90 for each, then the host's cpuidle driver and C-states.
docs/gpu-results.md (run 7) has the dev box's figures; it has not yet run on
the GPU machine (the session's device time was spent).

    python3 benchmarks/host_wake.py
"""

import glob
import os
import time

CPUS = sorted(os.sched_getaffinity(0))
A, B = CPUS[len(CPUS) // 3], CPUS[-1]  # two cores (on the GPU machine: not the engine core's)


def child(r: int, w: int, spin: bool) -> None:
    if spin:
        os.set_blocking(r, False)
    while True:
        if spin:
            while True:
                try:
                    b = os.read(r, 1)
                    break
                except BlockingIOError:
                    pass
        else:
            b = os.read(r, 1)
        if b == b"q":
            return
        os.write(w, b)


def run(spin: bool, gap: float, n: int = 200) -> tuple[float, float]:
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.sched_setaffinity(0, {A})
        child(r1, w2, spin)
        os._exit(0)
    os.sched_setaffinity(0, {B})
    ts = []
    for _ in range(n):
        if gap:
            time.sleep(gap)
        t = time.perf_counter()
        os.write(w1, b"x")
        os.read(r2, 1)
        ts.append((time.perf_counter() - t) * 1e6)
    os.write(w1, b"q")
    os.waitpid(pid, 0)
    ts.sort()
    return round(ts[len(ts)//2], 1), round(ts[int(len(ts)*0.9)], 1)


for spin in (False, True):
    for gap in (0, 0.05):
        print(f"responder {'spinning' if spin else 'parked  '} gap {gap*1e3:4.0f} ms: round trip p50/p90 us", run(spin, gap))


def rd(p: str) -> str:
    try:
        with open(p) as f:
            return f.read().strip()
    except OSError as e:
        return f"({type(e).__name__})"


print("cpuidle driver:", rd("/sys/devices/system/cpu/cpuidle/current_driver"), "governor:", rd("/sys/devices/system/cpu/cpuidle/current_governor_ro"), rd("/sys/devices/system/cpu/cpuidle/current_governor"))
for d in sorted(glob.glob(f"/sys/devices/system/cpu/cpu{A}/cpuidle/state*")):
    print(" ", rd(d+"/name"), "latency us", rd(d+"/latency"), "disabled", rd(d+"/disable"))
print("cpufreq governor:", rd(f"/sys/devices/system/cpu/cpu{A}/cpufreq/scaling_governor"), "hypervisor:", "hypervisor" in rd("/proc/cpuinfo"))
