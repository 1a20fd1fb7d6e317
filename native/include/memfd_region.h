// Shared Memory regions as memfds (docs/core.md "Shared regions"): the owner Process creates
// one (native/shm), sized and sealed, and passes its fd to its Controller with the first
// MEMORY_CREATE of the region (SCM_RIGHTS); the Controller checks it before it maps it
// (controller/src/memory.cc) and may hand a copy, read-only when the holder's cap is, to an
// adaptor that holds a cap to the region (MEMORY_MAP). No name anywhere: a region is reachable
// only by processes that were given its fd.
//
// Seals: F_SEAL_SHRINK is what the Controller requires (a mapping of a file truncated under it
// raises SIGBUS on access: with the seal, ftruncate to a smaller size fails with EPERM for
// everyone, the owner included); the owner also seals F_SEAL_GROW and F_SEAL_SEAL (nothing
// else can be sealed later, e.g. F_SEAL_FUTURE_WRITE against an adaptor's writable mapping).
//
// Header-only; every function returns 0 / an fd, or -errno. Linux >= 3.17 (memfd_create).
// An include guard, not #pragma once: the sanitizer build compiles a copy of controller/
// that reaches this header by two paths (two files to #pragma once).
#ifndef FRACTOS_INCLUDE_MEMFD_REGION_H
#define FRACTOS_INCLUDE_MEMFD_REGION_H
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>

namespace fractos::region {

/** Seals the Controller requires of a region's fd. */
constexpr int kRequiredSeals = F_SEAL_SHRINK;
/** Seals an owner puts on a region (native/shm createRegionFd). */
constexpr int kOwnerSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;

/**
 * A memfd of `size` bytes (zero-filled, sparse), close-on-exec, mode 0600 (another uid cannot
 * re-open it read-write through /proc/PID/fd from a read-only fd), with `seals` added (0: none,
 * for tests of refused fds). @return the fd, or -errno (EINVAL: size >= 2^63; ENOMEM, EMFILE,
 * EFBIG of ftruncate).
 */
inline int create(uint64_t size, int seals) {
  if (size >= (uint64_t(1) << 63)) return -EINVAL;
  int fd = memfd_create("fractos-region", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return -errno;
  int err = 0;
  if (fchmod(fd, 0600) != 0 || ftruncate(fd, off_t(size)) != 0 || (seals && fcntl(fd, F_ADD_SEALS, seals) != 0)) err = errno;
  if (err) {
    close(fd);
    return -err;
  }
  return fd;
}

/**
 * Check an fd received as a region before mapping it: a regular file opened read-write that
 * supports seals (a memfd: F_GET_SEALS works) and carries kRequiredSeals; `*size` gets its
 * size (bytes).
 * @return 0; -EBADF (not a memfd: a plain file, a pipe, a socket; or not open read-write);
 *   -EINVAL (a memfd without F_SEAL_SHRINK); -errno of fstat.
 */
inline int check(int fd, uint64_t* size) {
  int seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0) return errno == EINVAL ? -EBADF : -errno;
  struct stat st;
  if (fstat(fd, &st) != 0) return -errno;
  if (!S_ISREG(st.st_mode)) return -EBADF;
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || (fl & O_ACCMODE) != O_RDWR) return -EBADF;
  if ((seals & kRequiredSeals) != kRequiredSeals) return -EINVAL;
  *size = uint64_t(st.st_size);
  return 0;
}

/**
 * A read-only fd of the same region (a new open file description of the memfd through
 * /proc/self/fd: mmap of it with PROT_WRITE and MAP_SHARED fails with EACCES, and so does
 * mprotect to PROT_WRITE). Close-on-exec. @return the fd, or -errno (EACCES when this process
 * may not open the inode for reading, e.g. another uid's 0600 region).
 */
inline int reopenReadOnly(int fd) {
  char path[40];
  std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  int ro = open(path, O_RDONLY | O_CLOEXEC);
  return ro < 0 ? -errno : ro;
}

}  // namespace fractos::region

#endif  // FRACTOS_INCLUDE_MEMFD_REGION_H
