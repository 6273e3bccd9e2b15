# CUDA MPS (multi-process service) for a sweep's child processes: with it, the kernels of several processes on
# one GPU run at the same time instead of taking turns (time slices). Source this file, then mps_start / mps_stop.
# The daemon's pipes and logs live under /tmp/mue-mps (no root, no change to the GPU's settings); every process
# started after mps_start in this shell (the sweep's children too) inherits the pipe directory and becomes a client.
mps_start() {
  command -v nvidia-cuda-mps-control >/dev/null || { echo "mps: nvidia-cuda-mps-control not found"; return 1; }
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mue-mps/pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mue-mps/log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  # the control pipe is a FIFO, not a socket (a -S test never saw a daemon left running by an earlier call)
  if [ -e "$CUDA_MPS_PIPE_DIRECTORY/control" ] && pgrep -f nvidia-cuda-mps-control >/dev/null; then
    echo "mps: on (daemon already running)"; return 0
  fi
  nvidia-cuda-mps-control -d || { echo "mps: the control daemon did not start"; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY; return 1; }
  echo "mps: on"
}
mps_stop() {
  [ -n "${CUDA_MPS_PIPE_DIRECTORY:-}" ] || return 0
  echo quit | nvidia-cuda-mps-control
  # quit returns at once; wait (up to 10 s) for the daemon to end, so that a later mps_start starts afresh
  for _ in $(seq 20); do pgrep -f nvidia-cuda-mps-control >/dev/null || break; sleep 0.5; done
  pgrep -f nvidia-cuda-mps-control >/dev/null && echo "mps: the control daemon is still running"
  unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  echo "mps: off"
}
