# Draws docs/caching.png from the CSV the hit-rate harness writes:
#
#   build/benchmarks/keel_cache_hit_rate --csv /tmp/hit_rates.csv
#   gnuplot -e "data='/tmp/hit_rates.csv'" docs/caching-plot.gp
#
# gnuplot is only needed to redraw the picture, never to build keel.
if (!exists("data")) data = '/tmp/hit_rates.csv'
set terminal pngcairo size 1200,560 font "sans,10" noenhanced
set output 'docs/caching.png'
set datafile separator ","
set title "Hit rate of keel::cache::LocalStore by eviction policy, next to Belady's optimal (2M accesses per trace)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 noborder
set boxwidth 0.9
set yrange [0:100]
set ylabel "hit rate (%)"
set grid ytics
set key top left
set xtics rotate by -35 scale 0
set bmargin 7
set rmargin 10
plot data using 3:xtic(sprintf("%s @ %d", stringcolumn(1), column(2))) every ::1 title "LRU" lc rgb "#999999", \
     '' using 4 every ::1 title "W-TinyLFU" lc rgb "#1f77b4", \
     '' using 5 every ::1 title "Belady (offline optimum)" lc rgb "#2ca02c"
