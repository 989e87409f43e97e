"""What the text means: problems and their files, the built-in arithmetic task, answers and their token spans, steps, judge prompts."""
