# Draws docs/overload-sim.png from the simulation's CSVs:
#   mkdir -p /tmp/ovsim && KEEL_OVERLOAD_SIM_DIR=/tmp/ovsim \
#     build/tests/keel_unit_tests "overload simulation*"
#   gnuplot -e "dir='/tmp/ovsim'" docs/overload.gnuplot
if (!exists("dir")) dir = "/tmp/ovsim"
set terminal pngcairo size 1100,800 font ",10"
set output "docs/overload-sim.png"
set datafile separator ","
set key autotitle columnhead
set multiplot layout 2,1 title "50 slots x 10 ms (c = 50, 5000 calls/s); offered load ramps 0.5x -> 3x over 60 s"
set xlabel "offered load (x capacity)"
set ylabel "limit"
set yrange [0:210]
set xrange [0.5:3]
set arrow from 0.5,50 to 3,50 nohead dt 2 lc rgb "gray"
set arrow from 0.5,75 to 3,75 nohead dt 2 lc rgb "gray"
plot dir."/vegas__windowed_.csv" using 2:3 with lines lw 2 lt 1 title "vegas (windowed)", \
     dir."/gradient__envoy_.csv" using 2:3 with lines lw 2 lt 2 title "gradient (envoy)", \
     dir."/aimd__timeout_12_5ms__windowed_.csv" using 2:3 with lines lw 2 lt 3 title "aimd (windowed)", \
     dir."/gradient2__windowed_1s__Netflix_s_default_.csv" using 2:3 with lines lw 2 lt 4 title "gradient2 (windowed 1s)", \
     dir."/vegas__per_call.csv" using 2:3 with lines lw 1 lc rgb "#bbbbbb" title "vegas per call"
unset arrow
set ylabel "p99 latency of admitted calls per 100 ms (ms)"
set logscale y
set yrange [8:100000]
set arrow from 0.5,20 to 3,20 nohead dt 2 lc rgb "gray"
plot dir."/no_limiter.csv" using 2:4 with lines lw 2 lc rgb "black" title "no limiter", \
     dir."/vegas__windowed_.csv" using 2:4 with lines lw 2 lt 1 title "vegas (windowed)", \
     dir."/gradient__envoy_.csv" using 2:4 with lines lw 2 lt 2 title "gradient (envoy)", \
     dir."/aimd__timeout_12_5ms__windowed_.csv" using 2:4 with lines lw 2 lt 3 title "aimd (windowed)", \
     dir."/gradient2__windowed_1s__Netflix_s_default_.csv" using 2:4 with lines lw 2 lt 4 title "gradient2 (windowed 1s)"
unset multiplot
