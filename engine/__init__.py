"""The learner side of selfcorrect-rl: config, the training loop and the maths of an update."""
