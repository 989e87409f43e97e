#!/usr/bin/env bash
# Runs queued trainings one at a time: each line of logs/queue.txt is "NAME ARGS..."; done lines are recorded.
cd /work/main
while true; do
  line=$(grep -v -x -F -f logs/queue.done logs/queue.txt 2>/dev/null | head -1)
  [ -z "$line" ] && { sleep 20; continue; }
  while pgrep -f "engine/train.py" > /dev/null; do sleep 10; done  # one training at a time on 2 cores
  name=${line%% *}; args=${line#* }
  start=$(date +%s)
  deepspeed --master_port 29600 engine/train.py $args train.output_dir=runs/table/$name > logs/$name.log 2>&1
  echo "$name rc=$? $(( $(date +%s) - start ))s" >> logs/queue.times
  echo "$line" >> logs/queue.done
done
