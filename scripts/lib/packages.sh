# Sourced by the scripts that install Debian packages (install-deps.sh, go-test.sh,
# metrics-test.sh, cluster-test.sh).
#
#   ensure_packages WHO PACKAGE...
#
# Installs the packages that are missing (apt-get as root, or through sudo), after one
# `apt-get update`; prints "WHO: all N packages present" when none is. Idempotent.
ensure_packages() {
  local who=$1
  shift
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    echo "$who: all $# packages present"
    return 0
  fi
  local sudo=""
  if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
  echo "$who: installing ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
}
