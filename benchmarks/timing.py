"""Timing helpers shared by the benchmark suites: ratios are measured with both sides taken in turns."""

import timeit


def best_of_interleaved(functions, repeat, warmup=False):
    """The fastest of `repeat` runs of each function, taken in turns (A, B, A, B ...) so that a change in
    the machine's load during the measurement hits every side alike; `warmup` runs each once untimed first."""
    times = [[] for _ in functions]
    for function in functions if warmup else ():
        function()
    for _ in range(repeat):
        for function, taken in zip(functions, times):
            taken.append(timeit.timeit(function, number=1))
    return [min(taken) for taken in times]
