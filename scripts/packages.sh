# Installing what the scripts need; sourced by scripts/setup and qemu/vm.
#
#   need WHO CMD:PACKAGE...   make every CMD (a command name, or an absolute
#                             path that must exist) present
#
# Missing packages are installed in one apt-get call. apt is asked first
# (a simulation) what the install would remove, and the script stops if
# that is anything but PKG_MAY_REMOVE: apt once removed the image's newer
# qemu-utils to satisfy Debian's qemu-system-x86, and a later script died
# with "qemu-img: command not found". After installing, every command this
# run names and every command of SETUP_NEEDS and QEMU_NEEDS that was there
# before is checked again, and the script stops naming each missing command
# with its package. Installing needs root and apt-get; without them it
# stops with the apt-get command to run.
#
# Callers may set PKG_EXTRA_ARGS (more apt-get arguments: qemu/vm adds
# --allow-downgrades when it aligns qemu-utils with qemu-system-x86),
# PKG_PINNED (PACKAGE or PACKAGE=VERSION, installed with the missing
# packages, or alone when a caller has found a command present but wrong) and
# PKG_MAY_REMOVE (packages apt may replace, e.g. busybox by busybox-static).

# What scripts/test needs on the host (tests/ and perf/ run these).
SETUP_NEEDS=(
  fio:fio                    # the raw-device reference of the benchmarks
  losetup:util-linux         # loop-device tests
  setpriv:util-linux         # running a test program as another uid
  mountpoint:util-linux
  findmnt:util-linux
  unshare:util-linux         # private mount namespaces (the mount helper tests)
  fallocate:util-linux
  mount:mount
  strace:strace              # syscall counting
  perf:linux-perf
  fusermount3:fuse3          # the FUSE mount tests
  rsync:rsync
  setfattr:attr
  getfattr:attr
  setfacl:acl
  getfacl:acl
  sqlite3:sqlite3
  git:git
  /usr/bin/python3:python3   # Debian's: a pyenv python3 under /root is not for other uids
  /usr/lib/systemd/system-generators/systemd-fstab-generator:systemd # fstab lines as mount units
  mkfs.ext4:e2fsprogs        # the ext4 reference of tests and benchmarks
  e2fsck:e2fsprogs
)
# What the QEMU harness (qemu/vm) needs.
QEMU_NEEDS=(
  qemu-system-x86_64:qemu-system-x86
  qemu-img:qemu-utils
  /bin/busybox:busybox-static
  cpio:cpio
  zstd:zstd
  file:file
)

PKG_EXTRA_ARGS=()
PKG_PINNED=()
PKG_MAY_REMOVE=()

have_cmd() {
  local cmd="${1%%[[:space:]]*}"
  case "$cmd" in
    /*) [ -e "$cmd" ] ;;
    *) command -v "$cmd" >/dev/null 2>&1 ;;
  esac
}

# apt-get update, once per process.
PKG_UPDATED=0
pkg_update() {
  [ "$PKG_UPDATED" = 0 ] && [ "$(id -u)" = 0 ] || return 0
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || echo "$1: apt-get update failed; using the package lists already here" >&2
  PKG_UPDATED=1
}

pkg_die() {
  echo "$1: $2" >&2
  exit 1
}

need() {
  local who="$1"
  shift
  local spec cmd pkg missing_pkgs=() present_before=()
  for spec in "$@" "${SETUP_NEEDS[@]}" "${QEMU_NEEDS[@]}"; do
    have_cmd "${spec%%:*}" && present_before+=("$spec")
  done
  for spec in "$@"; do
    cmd="${spec%%:*}" pkg="${spec#*:}"
    if ! have_cmd "$cmd" && [[ " ${missing_pkgs[*]} " != *" $pkg "* ]]; then
      missing_pkgs+=("$pkg")
    fi
  done
  [ ${#missing_pkgs[@]} -gt 0 ] || [ ${#PKG_PINNED[@]} -gt 0 ] || return 0

  local install=() p pin
  for p in "${missing_pkgs[@]}"; do
    pin="$p"
    for spec in "${PKG_PINNED[@]}"; do
      [ "${spec%%=*}" = "$p" ] && pin="$spec"
    done
    install+=("$pin")
  done
  for spec in "${PKG_PINNED[@]}"; do
    [[ " ${install[*]} " == *" $spec "* ]] || install+=("$spec")
  done
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    pkg_die "$who" "missing ${missing_pkgs[*]}; install as root: apt-get install ${install[*]}"
  fi
  echo "$who: installing ${install[*]}" >&2
  pkg_update "$who"
  local args=(-y -qq --no-install-recommends "${PKG_EXTRA_ARGS[@]}")
  local removed=() r
  while read -r r; do
    [[ " ${PKG_MAY_REMOVE[*]} " == *" $r "* ]] || removed+=("$r")
  done < <(apt-get install -s "${args[@]}" "${install[@]}" 2>/dev/null | awk '$1 == "Remv" { print $2 }')
  if [ ${#removed[@]} -gt 0 ]; then
    pkg_die "$who" "installing ${install[*]} would make apt remove ${removed[*]}; refusing (install a consistent set by hand)"
  fi
  apt-get install "${args[@]}" "${install[@]}" >/dev/null \
    || echo "$who: apt-get install ${install[*]} failed" >&2

  local gone=()
  for spec in "$@" "${present_before[@]}"; do
    cmd="${spec%%:*}" pkg="${spec#*:}"
    if ! have_cmd "$cmd" && [[ " ${gone[*]} " != *" $cmd (package $pkg)"* ]]; then
      gone+=("$cmd (package $pkg)")
    fi
  done
  if [ ${#gone[@]} -gt 0 ]; then
    local list
    list="$(printf '%s, ' "${gone[@]}")"
    pkg_die "$who" "still missing after installing: ${list%, }"
  fi
  return 0
}

# The versions apt offers of a package, newest first.
pkg_versions() {
  apt-cache madison "$1" 2>/dev/null | awk -F'|' '{ gsub(/ /, "", $2); print $2 }'
}

# The two QEMU packages from one QEMU release: sets PKG_PINNED (and
# --allow-downgrades when that means an older qemu-utils) unless both are
# installed from the same source version already. qemu-utils newer than
# Debian's qemu-system-x86 Breaks its qemu-system-common, so installing
# qemu-system-x86 alone would remove it.
qemu_align() {
  local sys_src utils_src
  sys_src="$(dpkg-query -W -f='${db:Status-Abbrev}${source:Version}' qemu-system-x86 2>/dev/null || true)"
  utils_src="$(dpkg-query -W -f='${db:Status-Abbrev}${source:Version}' qemu-utils 2>/dev/null || true)"
  if [[ "$sys_src" == ii* ]] && [ "$sys_src" = "$utils_src" ]; then
    return 0
  fi
  pkg_update qemu/vm
  local common=() v
  for v in $(pkg_versions qemu-system-x86); do
    pkg_versions qemu-utils | grep -qxF "$v" && common+=("$v")
  done
  [ ${#common[@]} -gt 0 ] || pkg_die qemu/vm "apt offers no version of qemu-system-x86 that qemu-utils also has"
  # Keep an installed version when the other package has it too; else the
  # newest both have (apt-cache madison lists newest first).
  local installed pick="${common[0]}"
  for installed in qemu-utils qemu-system-x86; do
    v="$(dpkg-query -W -f='${db:Status-Abbrev}${Version}' "$installed" 2>/dev/null || true)"
    [[ "$v" == ii* ]] || continue
    v="${v#ii }"
    v="${v# }"
    [[ " ${common[*]} " == *" $v "* ]] && pick="$v"
  done
  PKG_PINNED=("qemu-system-x86=$pick" "qemu-utils=$pick")
  PKG_EXTRA_ARGS+=(--allow-downgrades)
}
