set terminal pngcairo size 1100,420 font "Sans,10"
set termoption noenhanced
set output "backoff_sim.png"
set datafile separator ","
set multiplot layout 1,2 title "OCC contention (backoff_sim, 100 trials, base 5 ms, cap 2 s, first retry 2 x base as in the post)"
set key top left
set xlabel "clients"
set grid
set ylabel "calls (writes sent)"
plot for [s in "exponential full_jitter equal_jitter decorrelated_jitter none"] \
  "< grep ',".s.",' backoff_sim.csv" using 1:3 with linespoints title s
set ylabel "time to completion (ms)"
set logscale y
plot for [s in "exponential full_jitter equal_jitter decorrelated_jitter none"] \
  "< grep ',".s.",' backoff_sim.csv" using 1:4 with linespoints title s
unset multiplot
