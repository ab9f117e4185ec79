"""What the stages share on Ray: connecting (`connect`), batch inference on Ray Data actor pools
(`batch_inference`), a dataset's cached reference features (`reference`), checkpoints on the run's
storage (`checkpoints`) and the training progress bar (`progress`)."""
