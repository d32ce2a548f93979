"""DVC stage `train_stage1`: geometry-aware encoder + canonical latent discriminator (Eq. 11)."""
import os

# Before torch loads OpenMP: spinning threads stall for seconds when the 2 cores are shared.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from goae.pipeline import training_main
from goae.train.stages import train_stage1


def main(argv=None) -> None:
    training_main("train_stage1", train_stage1, "--davg", "D_avg folder (written by `davg`)", argv)


if __name__ == "__main__":
    main()
