"""The benchmark's harness, run by ``python -m experiments.benchmark`` from a clone (not part of the wheel).

timing          SteadyEpochs, interleaved repeats and their medians, the matrix-multiply rate, the machine
epoch           the runner path, the minimal flax + optax scan loop, the vmapped and jitted-step variants
torch_variants  the MLP and conv VAEs in PyTorch eager
sections        the epoch, conv, seeds, target and devices sections
profiling       the profile section: XLA's own op times, by kind
processes       the startup and commands sections: whole processes
report          the tables printed on stdout
"""
