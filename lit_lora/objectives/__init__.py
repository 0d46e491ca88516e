"""Objectives: what a training step computes from its batch. `Objective` is the contract (the batch keys it
reads, its loss, its evaluation sums and metrics); `SupervisedNll` is supervised fine-tuning's token-weighted
next-token NLL, the default. Another objective is one new file with a subclass, chosen by configuration:

    --model.objective my_package.MyObjective --model.objective.init_args.beta 0.1
"""
