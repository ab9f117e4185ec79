"""What the stages share on Ray: connecting (`connect`), batch inference on Ray Data actor pools
(`batch_inference`), a dataset's cached reference features (`reference`), checkpoints on the run's
storage (`checkpoints`), every stage's progress (`progress`) and what Ray and MLflow may print on
the console (`console`)."""
