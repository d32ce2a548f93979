"""DVC stage `train_stage2`: AFA with the encoder frozen (Eq. 6, L_ΔF, L_BG)."""
import os

# Before torch loads OpenMP: spinning threads stall for seconds when the 2 cores are shared.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from goae.pipeline import training_main
from goae.train.stages import train_stage2


def main(argv=None) -> None:
    training_main("train_stage2", train_stage2, "--stage1", "stage-1 weights folder (encoder)", argv,
                  {"--davg-dir": "D_avg folder (written by `davg`); needed for λ5·L_BG (loss.stage2_bg)"})


if __name__ == "__main__":
    main()
