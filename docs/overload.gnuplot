# Draws docs/overload-sim.png, overload-throttle.png, overload-hedge.png and overload-codel.png
# from the simulations' CSVs:
#   mkdir -p /tmp/ovsim && KEEL_OVERLOAD_SIM_DIR=/tmp/ovsim \
#     build/tests/keel_unit_tests "overload simulation*,throttle simulation*,hedge simulation*,codel simulation*"
#   gnuplot -e "dir='/tmp/ovsim'" docs/overload.gnuplot
if (!exists("dir")) dir = "/tmp/ovsim"
# -e "only='throttle'" (or sim, hedge, codel) draws one figure.
if (!exists("only") || only eq "sim") {
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
}

# docs/overload-throttle.png, from throttle.csv (KEEL_OVERLOAD_SIM_DIR with
# build/tests/keel_unit_tests "throttle simulation*").
if (!exists("only") || only eq "throttle") {
  reset
  set terminal pngcairo size 1100,800 font ",11"
  set output "docs/overload-throttle.png"
  set datafile separator ","
  set multiplot layout 2,1 title "Adaptive throttle, K = 2: a backend accepting 200 calls/s, Poisson arrivals, last 2 of 10 min"
  set key top left
  set xlabel "offered load (x backend capacity)"
  set ylabel "traffic (x backend capacity)"
  set xrange [0:10]
  set yrange [0:4]
  set grid
  set arrow from 0,2 to 10,2 nohead dt 2 lc rgb "gray"
  set label "K x capacity" at 8.2,2.2 tc rgb "gray40"
  plot x with lines dt 3 lc rgb "gray60" title "without the throttle (all of it)", \
       dir."/throttle.csv" using 1:2 with linespoints lw 2 pt 7 ps 0.6 lc rgb "#1f77b4" title "reaching the backend", \
       dir."/throttle.csv" using 1:3 with linespoints lw 2 pt 5 ps 0.5 lc rgb "#2ca02c" title "accepted by the backend"
  unset arrow
  unset label
  set ylabel "rejected locally (%)"
  set yrange [0:100]
  set key top left
  plot dir."/throttle.csv" using 1:(100*$4) with linespoints lw 2 pt 7 ps 0.6 lc rgb "#d62728" title "rejected by the client, before the backend", \
       (x > 2 ? 100*(x-2)/x : 0) with lines dt 2 lc rgb "gray40" title "1 - 2/offered (what leaves exactly 2x)"
  unset multiplot
}

# docs/overload-hedge.png, from hedge.csv (build/tests/keel_unit_tests "hedge simulation*").
if (!exists("only") || only eq "hedge") {
  reset
  set terminal pngcairo size 1100,600 font ",11"
  set output "docs/overload-hedge.png"
  set datafile separator ","
  set title "Hedging at p95: attempts 5 ms + exp(5 ms), 1% stall 1 s more, 200,000 calls"
  set xlabel "percentile"
  set ylabel "latency (ms)"
  set logscale y
  set yrange [5:2000]
  set xrange [0.3:5]
  set xtics ("p50" 0.30103, "p90" 1, "p99" 2, "p99.9" 3, "p99.99" 4, "p99.999" 5)
  set grid
  set key top left
  plot dir."/hedge.csv" using 1:3 with lines lw 2 lc rgb "#d62728" title "unhedged", \
       dir."/hedge.csv" using 1:4 with lines lw 2 lc rgb "#1f77b4" title "hedged at p95 (+5% attempts)", \
       dir."/hedge.csv" using 1:5 with lines dt 2 lc rgb "gray40" title "the hedge delay (p95 of first attempts)"
}

# docs/overload-codel.png, from the CoDel runs (build/tests/keel_unit_tests "codel simulation*").
if (!exists("only") || only eq "codel") {
  reset
  set terminal pngcairo size 1100,800 font ",11"
  set output "docs/overload-codel.png"
  set datafile separator ","
  set multiplot layout 2,1 title "Queue in front of 50 slots x 10 ms (5000 calls/s), Poisson arrivals for 5 s, per 250 ms"
  set xlabel "time (s)"
  set ylabel "mean wait of served callers (ms)"
  set xrange [0:5]
  set yrange [0:120]
  set grid
  set key right center opaque
  set arrow from 0,15 to 5,15 nohead dt 2 lc rgb "gray40"
  set label "target + service time = 15 ms" at 0.1,21 tc rgb "gray30"
  plot dir."/fifo_at_1_5x__timeout_100ms.csv" using ($1+0.125):4 with linespoints lw 2 pt 7 ps 0.6 lc rgb "#d62728" title "FIFO, 100 ms timeout, 1.5x", \
       dir."/codel_at_1_5x.csv" using ($1+0.125):4 with linespoints lw 2 pt 7 ps 0.6 lc rgb "#1f77b4" title "CoDel + adaptive LIFO, 1.5x", \
       dir."/codel_at_2_0x.csv" using ($1+0.125):4 with linespoints lw 2 pt 5 ps 0.6 lc rgb "#2ca02c" title "CoDel + adaptive LIFO, 2x"
  unset arrow
  unset label
  set ylabel "timed out in the queue (%)"
  set yrange [0:100]
  set key bottom right opaque
  plot dir."/fifo_at_1_5x__timeout_100ms.csv" using ($1+0.125):(100*$3) with linespoints lw 2 pt 7 ps 0.6 lc rgb "#d62728" title "FIFO, 100 ms timeout, 1.5x", \
       dir."/codel_at_1_5x.csv" using ($1+0.125):(100*$3) with linespoints lw 2 pt 7 ps 0.6 lc rgb "#1f77b4" title "CoDel + adaptive LIFO, 1.5x", \
       dir."/codel_at_2_0x.csv" using ($1+0.125):(100*$3) with linespoints lw 2 pt 5 ps 0.6 lc rgb "#2ca02c" title "CoDel + adaptive LIFO, 2x"
  unset multiplot
}
