#!/usr/bin/env bash
# Build the local images the tests and examples use. No image registry is
# reachable, so every image is made from Debian packages on this machine:
#
#   smlocal-test/busybox:1     rootfs = the busybox-static binary + applet links
#   smlocal/python-base:1      rootfs = debootstrap (python3, numpy, sklearn, boto3)
#   smlocal-example/sklearn:1  docker build of examples/sklearn (FROM python-base)
#   smlocal/training-toolkit:1 docker build of examples/toolkit (FROM python-base): the real
#                              SageMaker training toolkit, from wheels built on the host
#   smlocal-example/sklearn-script:1
#                              docker build of examples/script-mode (FROM training-toolkit):
#                              train.py baked into /opt/ml/code, ENV SAGEMAKER_PROGRAM
#   smlocal-test/torch:1       rootfs = debootstrap (python3, Debian's PyTorch): the /dev/shm tests
#
# Cached by tag: an image is built only when its tag is missing. To pick up a
# change, bump the tag (and its users) or pass --rebuild TAG (repeatable).
#
# Environment:
#   SMLOCAL_DEBIAN_MIRROR  mirror for debootstrap (default: the one apt uses here)
#   TMPDIR                 where the temporary rootfs goes (default /var/tmp)
#   PYTHON                 interpreter whose pip builds the toolkit's wheels (default python3);
#                          must be the base image's major.minor (3.11, Debian bookworm)
#   SMLOCAL_CACHE_DIR      where built wheels are kept, by version (default ~/.cache/smlocal)
set -euo pipefail

BUSYBOX_TAG="smlocal-test/busybox:1"
PYTHON_TAG="smlocal/python-base:1"
SKLEARN_TAG="smlocal-example/sklearn:1"
TOOLKIT_TAG="smlocal/training-toolkit:1"
SCRIPT_TAG="smlocal-example/sklearn-script:1"
TORCH_TAG="smlocal-test/torch:1"
# Bump TOOLKIT_TAG with it: the image is cached by tag.
TOOLKIT_VERSION="5.1.4"
PYTHON="${PYTHON:-python3}"
CACHE_DIR="${SMLOCAL_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/smlocal}"

SUITE="bookworm"
FALLBACK_MIRROR="http://deb.debian.org/debian"
PYTHON_PACKAGES="python3,python3-numpy,python3-sklearn,python3-boto3,python3-venv,python3-pip,ca-certificates"
TORCH_PACKAGES="python3,python3-torch"
IMAGE_PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
LOCK_FILE="/tmp/smlocal-build-images.lock"

export PATH="${PATH}:/usr/local/sbin:/usr/sbin:/sbin"

log() { printf '[build-images] %s\n' "$*" >&2; }
die() { printf '[build-images] ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
    printf 'usage: %s [--rebuild TAG]...\n' "$0" >&2
    exit 2
}

REBUILD=()
while (($# > 0)); do
    case "$1" in
        --rebuild)
            (($# >= 2)) || usage
            REBUILD+=("$2")
            shift 2
            ;;
        -h | --help) usage ;;
        *) usage ;;
    esac
done

WORK_DIR=""
cleanup() {
    [[ -n "${WORK_DIR}" && -d "${WORK_DIR}" ]] || return 0
    # debootstrap mounts proc/sys inside the target and can leave them behind
    # when it fails; unmount first so rm never walks into the host's /proc.
    local mnt
    while read -r mnt; do
        umount -l "${mnt}" 2>/dev/null || true
    done < <(awk -v d="${WORK_DIR}/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r)
    rm -rf --one-file-system "${WORK_DIR}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

engine_up() {
    local version
    version="$(docker info --format '{{.ServerVersion}}' 2>/dev/null)" || return 1
    [[ -n "${version}" ]]
}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

wants_rebuild() {
    local tag
    for tag in "${REBUILD[@]}"; do
        [[ "${tag}" == "$1" ]] && return 0
    done
    return 1
}

needs_build() { wants_rebuild "$1" || ! have_image "$1"; }

static_busybox_path() {
    local path
    path="$(dpkg -L busybox-static 2>/dev/null | grep -E '^(/usr)?/s?bin/busybox$' | head -n 1 || true)"
    [[ -n "${path}" && -x "${path}" ]] || return 1
    printf '%s\n' "${path}"
}

# The mirror apt on this machine uses for the Debian main archive, so that
# debootstrap goes through the same (reachable) host and snapshot.
debian_mirror() {
    if [[ -n "${SMLOCAL_DEBIAN_MIRROR:-}" ]]; then
        printf '%s\n' "${SMLOCAL_DEBIAN_MIRROR%/}"
        return
    fi
    local f uri=""
    shopt -s nullglob
    for f in /etc/apt/sources.list.d/*.sources; do
        uri="$(awk -v suite="${SUITE}" '
            function flush() {
                if (is_deb && has_suite && enabled && uri != "" && !found) { print uri; found = 1 }
                is_deb = 0; has_suite = 0; enabled = 1; uri = ""
            }
            BEGIN { enabled = 1 }
            /^[[:space:]]*$/ { flush(); next }
            /^[[:space:]]*#/ { next }
            tolower($1) == "types:"   { for (i = 2; i <= NF; i++) if ($i == "deb") is_deb = 1 }
            tolower($1) == "uris:"    { for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file):/) { uri = $i; break } }
            tolower($1) == "suites:"  { for (i = 2; i <= NF; i++) if ($i == suite) has_suite = 1 }
            tolower($1) == "enabled:" { if (tolower($2) == "no") enabled = 0 }
            END { flush() }' "${f}")"
        [[ -n "${uri}" ]] && break
    done
    if [[ -z "${uri}" ]]; then
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [[ -f "${f}" ]] || continue
            uri="$(awk -v suite="${SUITE}" '
                /^[[:space:]]*#/ { next }
                $1 == "deb" {
                    i = 2
                    if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                    if ($i ~ /^(https?|file):/ && $(i + 1) == suite) { print $i; exit }
                }' "${f}")"
            [[ -n "${uri}" ]] && break
        done
    fi
    shopt -u nullglob
    uri="${uri:-${FALLBACK_MIRROR}}"
    printf '%s\n' "${uri%/}"
}

import_rootfs() {
    # $1 rootfs dir, $2 tag, rest: --change arguments for docker import.
    local rootfs="$1" tag="$2"
    shift 2
    # /dev, /proc and /sys are provided by the engine at run time.
    tar --numeric-owner -C "${rootfs}" \
        --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
        -c . | docker import "$@" - "${tag}" >/dev/null
}

build_busybox() {
    local bb rootfs applet
    bb="$(static_busybox_path)" || die "busybox-static is not installed (run scripts/ensure-docker.sh)"
    # A dynamically linked busybox would not start in an otherwise empty rootfs.
    if ldd "${bb}" >/dev/null 2>&1; then
        die "${bb} is dynamically linked; need the busybox-static package"
    fi
    rootfs="${WORK_DIR}/busybox-rootfs"
    mkdir -p "${rootfs}"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,var/tmp,proc,sys,dev}
    chmod 1777 "${rootfs}/tmp" "${rootfs}/var/tmp"
    install -m 0755 "${bb}" "${rootfs}/bin/busybox"
    # Same result as `busybox --install -s`, but without needing to chroot.
    while read -r applet; do
        [[ "${applet}" == "bin/busybox" ]] && continue
        [[ -e "${rootfs}/${applet}" || -L "${rootfs}/${applet}" ]] && continue
        ln -s /bin/busybox "${rootfs}/${applet}"
    done < <("${bb}" --list-full)
    for applet in sh sleep cat ls tar mkfifo wc; do
        [[ -L "${rootfs}/bin/${applet}" || -L "${rootfs}/usr/bin/${applet}" ]] \
            || die "busybox at ${bb} has no '${applet}' applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
        >"${rootfs}/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"${rootfs}/etc/group"
    import_rootfs "${rootfs}" "${BUSYBOX_TAG}" \
        --change "ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin" \
        --change 'CMD ["/bin/sh"]' \
        --message "smlocal test image: static busybox"
    rm -rf --one-file-system "${rootfs}"
}

# A minbase Debian with `packages` in `rootfs`, from the mirror apt uses here.
debootstrap_rootfs() {
    local packages="$1" rootfs="$2" mirror
    command -v debootstrap >/dev/null 2>&1 || die "debootstrap is not installed (run scripts/ensure-docker.sh)"
    mirror="$(debian_mirror)"
    log "debootstrap ${SUITE} from ${mirror} (takes a few minutes)"
    if ! debootstrap --variant=minbase --include="${packages}" \
        "${SUITE}" "${rootfs}" "${mirror}" >"${WORK_DIR}/debootstrap.log" 2>&1; then
        tail -n 40 "${WORK_DIR}/debootstrap.log" >&2
        [[ -f "${rootfs}/debootstrap/debootstrap.log" ]] && tail -n 40 "${rootfs}/debootstrap/debootstrap.log" >&2
        die "debootstrap failed (mirror ${mirror})"
    fi
}

build_python_base() {
    local rootfs="${WORK_DIR}/python-rootfs"
    debootstrap_rootfs "${PYTHON_PACKAGES}" "${rootfs}"
    # Downloaded .debs, package lists, docs and translations are dead weight
    # in a container. Most of the remaining ~1 GB is g++/boost, which Debian's
    # python3-scipy drags in through python3-pythran; force-removing them would
    # leave dpkg inconsistent, so they stay.
    rm -rf "${rootfs}"/var/cache/apt/archives/*.deb \
        "${rootfs}"/var/cache/apt/*.bin \
        "${rootfs}"/var/lib/apt/lists/* \
        "${rootfs}"/var/log/*.log "${rootfs}"/var/log/apt/* \
        "${rootfs}"/usr/share/doc/* "${rootfs}"/usr/share/man/* "${rootfs}"/usr/share/info/* \
        "${rootfs}"/usr/share/locale/* \
        "${rootfs}"/tmp/* "${rootfs}"/var/tmp/*
    # The engine writes these per container; stale host copies only confuse.
    : >"${rootfs}/etc/resolv.conf"
    rm -f "${rootfs}/etc/hostname"
    import_rootfs "${rootfs}" "${PYTHON_TAG}" \
        --change "ENV PATH=${IMAGE_PATH}" \
        --change "ENV LANG=C.UTF-8" \
        --change 'CMD ["python3"]' \
        --message "smlocal python base: debian ${SUITE} minbase + python3, numpy, sklearn, boto3"
    rm -rf --one-file-system "${rootfs}"
}

# Debian's own PyTorch build (CPU only), for a real DataLoader with worker processes.
build_torch() {
    local rootfs="${WORK_DIR}/torch-rootfs"
    debootstrap_rootfs "${TORCH_PACKAGES}" "${rootfs}"
    rm -rf "${rootfs}"/var/cache/apt/archives/*.deb "${rootfs}"/var/cache/apt/*.bin "${rootfs}"/var/lib/apt/lists/* \
        "${rootfs}"/usr/share/doc/* "${rootfs}"/usr/share/man/* "${rootfs}"/usr/share/locale/* \
        "${rootfs}"/tmp/* "${rootfs}"/var/tmp/*
    : >"${rootfs}/etc/resolv.conf"
    rm -f "${rootfs}/etc/hostname"
    import_rootfs "${rootfs}" "${TORCH_TAG}" \
        --change "ENV PATH=${IMAGE_PATH}" \
        --change "ENV LANG=C.UTF-8" \
        --change 'CMD ["python3"]' \
        --message "smlocal test image: debian ${SUITE} minbase + python3-torch"
    rm -rf --one-file-system "${rootfs}"
}

build_sklearn_example() {
    have_image "${PYTHON_TAG}" || die "${PYTHON_TAG} is missing"
    # The classic builder resolves FROM against local images without pulling;
    # --network none proves the build never needs the network.
    DOCKER_BUILDKIT=0 docker build --network none -q -t "${SKLEARN_TAG}" \
        "${REPO_ROOT}/examples/sklearn" >/dev/null
}

image_python_version() {
    docker run --rm --network none "${PYTHON_TAG}" \
        python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])'
}

# The toolkit and its dependencies as wheels for the image's Python, built with the host's pip
# (PyPI is reachable from the host, never from `docker build`), cached by toolkit and Python version.
# Prints the wheel folder.
toolkit_wheels() {
    local image_py host_py dir tmp
    image_py="$(image_python_version)"
    dir="${CACHE_DIR}/wheels/sagemaker-training-${TOOLKIT_VERSION}-py${image_py}"
    if [[ -f "${dir}/.complete" ]]; then
        log "toolkit wheels: cached in ${dir}"
        printf '%s\n' "${dir}"
        return
    fi
    # A C extension built for another Python would install but fail to import.
    host_py="$("${PYTHON}" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
        || die "cannot run ${PYTHON}; set PYTHON to a Python ${image_py} interpreter with pip"
    [[ "${host_py}" == "${image_py}" ]] \
        || die "${PYTHON} is Python ${host_py} but ${PYTHON_TAG} has ${image_py}; set PYTHON to a ${image_py} interpreter"
    tmp="${WORK_DIR}/toolkit-wheels"
    mkdir -p "${tmp}"
    log "toolkit wheels: pip wheel sagemaker-training==${TOOLKIT_VERSION} with ${PYTHON}"
    "${PYTHON}" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "${tmp}" \
        "sagemaker-training==${TOOLKIT_VERSION}" >&2 \
        || die "pip wheel sagemaker-training==${TOOLKIT_VERSION} failed"
    # The base image's Debian packages provide numpy and scipy (built for it, and what scikit-learn
    # there was built against) and the venv's own pip; 50 MB of wheels less.
    rm -f "${tmp}"/numpy-*.whl "${tmp}"/scipy-*.whl "${tmp}"/pip-*.whl
    ls "${tmp}"/sagemaker_training-"${TOOLKIT_VERSION}"-*.whl >/dev/null 2>&1 \
        || die "pip wheel produced no sagemaker_training ${TOOLKIT_VERSION} wheel"
    touch "${tmp}/.complete"
    mkdir -p "$(dirname "${dir}")"
    rm -rf "${dir}"
    mv "${tmp}" "${dir}"
    printf '%s\n' "${dir}"
}

build_toolkit() {
    local wheels ctx
    have_image "${PYTHON_TAG}" || die "${PYTHON_TAG} is missing"
    wheels="$(toolkit_wheels)"
    ctx="${WORK_DIR}/toolkit-context"
    mkdir -p "${ctx}/wheels"
    cp "${REPO_ROOT}/examples/toolkit/Dockerfile" "${ctx}/Dockerfile"
    cp "${wheels}"/*.whl "${ctx}/wheels/"
    DOCKER_BUILDKIT=0 docker build --network none -q --build-arg "TOOLKIT_VERSION=${TOOLKIT_VERSION}" \
        -t "${TOOLKIT_TAG}" "${ctx}" >/dev/null
    rm -rf "${ctx}"
}

build_script_example() {
    have_image "${TOOLKIT_TAG}" || die "${TOOLKIT_TAG} is missing"
    DOCKER_BUILDKIT=0 docker build --network none -q -t "${SCRIPT_TAG}" \
        "${REPO_ROOT}/examples/script-mode" >/dev/null
}

declare -A TIMINGS=()

build_if_missing() {
    local tag="$1" builder="$2" start
    if ! needs_build "${tag}"; then
        log "${tag}: present, skipping"
        TIMINGS["${tag}"]="cached"
        return
    fi
    log "${tag}: building"
    start=${SECONDS}
    "${builder}"
    have_image "${tag}" || die "${tag}: build finished but the tag is missing"
    TIMINGS["${tag}"]="built in $((SECONDS - start))s"
    log "${tag}: ${TIMINGS["${tag}"]} ($(docker image inspect --format '{{.Size}}' "${tag}" | awk '{ printf "%.0f MB", $1 / 1e6 }'))"
}

main() {
    local total_start=${SECONDS} tag
    # Parallel test workers may all call this; one build at a time.
    exec 9>"${LOCK_FILE}"
    flock 9

    if ! engine_up; then
        log "docker engine not answering; running ensure-docker.sh"
        "${SCRIPT_DIR}/ensure-docker.sh"
    fi
    if { needs_build "${BUSYBOX_TAG}" && ! static_busybox_path >/dev/null; } \
        || { { needs_build "${PYTHON_TAG}" || needs_build "${TORCH_TAG}"; } && ! command -v debootstrap >/dev/null 2>&1; }; then
        log "build tools missing; running ensure-docker.sh"
        "${SCRIPT_DIR}/ensure-docker.sh"
    fi

    WORK_DIR="$(mktemp -d "${TMPDIR:-/var/tmp}/smlocal-images.XXXXXX")"

    build_if_missing "${BUSYBOX_TAG}" build_busybox
    build_if_missing "${PYTHON_TAG}" build_python_base
    build_if_missing "${SKLEARN_TAG}" build_sklearn_example
    build_if_missing "${TOOLKIT_TAG}" build_toolkit
    build_if_missing "${SCRIPT_TAG}" build_script_example
    build_if_missing "${TORCH_TAG}" build_torch

    for tag in "${BUSYBOX_TAG}" "${PYTHON_TAG}" "${SKLEARN_TAG}" "${TOOLKIT_TAG}" "${SCRIPT_TAG}" "${TORCH_TAG}"; do
        log "  ${tag}: ${TIMINGS["${tag}"]}"
    done
    log "done in $((SECONDS - total_start))s"
}

main
