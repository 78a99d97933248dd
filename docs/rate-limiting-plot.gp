# Draws docs/rate-limiting.png from the series written by the unit test
# "limiters set to 10 per second differ as documented under the same bursty input":
#
#   KEEL_LIMIT_PLOT_CSV=/tmp/limits.csv build/tests/keel_unit_tests "limiters set to 10 per second*"
#   gnuplot -e "data='/tmp/limits.csv'" docs/rate-limiting-plot.gp
#
# gnuplot is only needed to redraw the picture, never to build keel.
if (!exists("data")) data = '/tmp/limits.csv'
set terminal pngcairo size 1100,1300 font "sans,10" noenhanced
set output 'docs/rate-limiting.png'
set multiplot layout 6,1 title "Admitted per 100 ms, every limiter set to 10/s, same bursty input (grey: offered)"
set style fill solid 0.8 noborder
set boxwidth 0.09
set xrange [0:10.5]
set yrange [0:12]
set ytics 5
set grid ytics
set key top right
set lmargin 8
titles = "token_bucket gcra fixed_window sliding_window_log sliding_window_counter leaky_bucket"
do for [i=1:6] {
  if (i == 6) { set xlabel "time (s)" } else { unset xlabel }
  plot data using ($1+0.05):($2 > 12 ? 12 : $2) with boxes lc rgb "#cccccc" title "offered (clipped at 12)", \
       '' using ($1+0.05):(column(i+2)) with boxes lc rgb "#1f77b4" title word(titles, i)
}
unset multiplot
