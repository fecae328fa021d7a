"""`lmadapt` under an address-space limit, as a cluster's memory limit or a full GPU would stop it:
`python memory_limited.py LIMIT_MB lmadapt-arguments...` sets RLIMIT_AS to LIMIT_MB (0: none) once the CLI's
imports are in, runs the verb, and prints the process's peak address space (VmPeak, MB) on its last line."""
import resource
import sys

from lmadapt.cli import main

limit = int(sys.argv[1]) * 2**20
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
status = main(sys.argv[2:])
peak = next(line for line in open("/proc/self/status") if line.startswith("VmPeak")).split()[1]
print(f"VmPeak {int(peak) // 1024}")
sys.exit(status)
