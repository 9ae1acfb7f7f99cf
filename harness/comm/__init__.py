"""Communication baselines: what the collectives of MPI (mpi4py), Horovod and MWMS cost on this machine."""
