"""The learner: a DeepSpeed engine over the policy, its batches and the policy-gradient maths of an update."""
