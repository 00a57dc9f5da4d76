// Package cloudtaser reads secrets that the cloudtaser wrapper delivered into
// this process's memory.
//
// # How secrets arrive
//
// The cloudtaser wrapper fetches the workload's secrets from OpenBao before
// the application starts. Each secret is placed in its own memory file
// descriptor, preferably a memfd_secret(2) fd: memory that is removed from
// the kernel's direct map, so it is not reachable by other processes, by the
// kernel itself through ordinary means, or by swap and core dumps. When the
// kernel does not offer memfd_secret the wrapper falls back to an ordinary
// sealed memfd. The wrapper then execve()s the application with these fds
// inherited and describes them in the environment variable CLOUDTASER_FDS,
// one entry per line:
//
//	KIND FD NAME
//
// KIND is "sdk" (a secret for this package), "file" or "env" (secrets the
// interposer serves as a file or an environment variable; validated, not
// used here), FD is the decimal descriptor number and NAME is the rest of the
// line (contracts/README.md in the repository is the full contract, and the
// manifest subpackage its one Go implementation). The file size of each fd is exactly the length
// of the secret, which may be zero.
//
// # Reading
//
// [GetSecret] looks the name up, takes the current size with fstat, maps the
// fd read-only with MAP_SHARED, copies the bytes out, and unmaps again. The
// size is read fresh on every call, because the wrapper's refresher may
// rewrite a secret in place at any time; the next GetSecret sees the new
// value.
//
// There is no read()-based path: a memfd_secret fd cannot be read with
// read(2) or pread(2) (the kernel answers EINVAL and ESPIPE respectively);
// its contents are only reachable through a shared mapping. The same mmap
// path also works for the sealed-memfd fallback, so both are read the same way.
//
// # The returned copy is ordinary memory
//
// Only the memfd_secret fd is protected. The []byte returned by GetSecret is
// an ordinary Go heap allocation: it is visible in /proc/PID/mem to a
// sufficiently privileged observer, can end up in a core dump, and the
// garbage collector or the runtime may copy it (for example when a slice it
// was appended to grows) and leave stale copies behind that this package
// cannot reach. Keep the copy short-lived, avoid converting it to a string
// (strings are immutable and cannot be wiped), and call [Wipe] as soon as
// you are done with it. Call GetSecret again when you need the secret
// later instead of caching it.
//
// # Not dumpable
//
// Initialising this package sets the process non-dumpable
// (prctl(PR_SET_DUMPABLE, 0)): no core dumps, and the kernel refuses ptrace
// and /proc/PID/{mem,environ} to other processes of the same user that lack
// CAP_SYS_PTRACE. execve had made the app dumpable again.
//
// Errors returned by this package never contain secret bytes; they name the
// secret and, for descriptor problems, the fd number.
package cloudtaser
