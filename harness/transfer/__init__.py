"""Transfer learning across modalities: pre-train on a source pair, fine-tune on a target pair per frozen
depth, train the same target from scratch with the same split, budget, optimiser and seed, and compare."""
