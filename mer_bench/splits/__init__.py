"""OOD splits: build (search), check (statistic, structure, probe), apply (serve by id), and
CIDer's counterfactual bias-token vocabulary.

Dependency direction: `mer_bench.splits` uses `mer_bench.data` (schema, loaders); the data
layer never imports this package. `mer_bench.datasets.load_dataset` composes the two.
"""
