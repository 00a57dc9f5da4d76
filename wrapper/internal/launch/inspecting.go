// Package launch prepares and performs the app's execve: it finds the program
// (PATH, #! scripts to their interpreter), decides how env values reach it
// (manifest lines served by the interposer, or envp), builds the app's argv
// and environment in a secret buffer, and execs in the same PID.
package launch

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// Libc names, as in the interposer's file names (libcloudtaser-LIBC.so).
const (
	Glibc = "glibc"
	Musl  = "musl"
)

// NotFound and Denied are the execvp failures (exit 127 and 126).
var (
	ErrNotFound = errors.New("not found")
	ErrDenied   = errors.New("permission denied")
)

// Resolve finds command as execvp does: a name with a slash as it is, else the
// first executable regular file of that name in path (an empty entry is the
// current directory).
func Resolve(command, path string) (string, error) {
	if strings.Contains(command, "/") {
		return command, checkExecutable(command)
	}
	denied := false
	for _, dir := range strings.Split(path, ":") {
		if dir == "" {
			dir = "."
		}
		candidate := filepath.Join(dir, command)
		switch err := checkExecutable(candidate); {
		case err == nil:
			return candidate, nil
		case errors.Is(err, ErrDenied):
			denied = true
		}
	}
	if denied {
		return "", ErrDenied
	}
	return "", ErrNotFound
}

func checkExecutable(path string) error {
	info, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return ErrDenied
		}
		return ErrNotFound
	}
	if !info.Mode().IsRegular() || unix.Access(path, unix.X_OK) != nil {
		return ErrDenied
	}
	return nil
}

// App is what the kernel will run for a command: the ELF at the end of any #!
// chain, and which interposer (if any) it can load.
type App struct {
	Path string // the resolved command
	ELF  string // the program the kernel runs in the end (the interpreter of a script)
	Libc string // Glibc, Musl, or "": the interposer cannot be loaded
	Why  string // when Libc is "": why not
}

// maxScripts: the kernel follows at most 4 levels of #! interpreters.
const maxScripts = 4

// Inspect looks at path (already resolved) without running it.
func Inspect(path string) App {
	app := App{Path: path, ELF: path}
	for depth := 0; ; depth++ {
		interp, isScript, err := shebang(app.ELF)
		if err != nil {
			app.Why = "cannot be read (" + err.Error() + ")"
			return app
		}
		if !isScript {
			break
		}
		if depth == maxScripts {
			app.Why = "is a chain of more than 4 #! scripts"
			return app
		}
		app.ELF = interp
	}
	f, err := elf.Open(app.ELF)
	if err != nil {
		app.Why = "is not an ELF program"
		return app
	}
	defer f.Close()
	if f.Machine != nativeMachine() {
		app.Why = fmt.Sprintf("is built for %v, not for this machine", f.Machine)
		return app
	}
	loader := ""
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				app.Why = "has an unreadable ELF interpreter"
				return app
			}
			loader = string(bytes.TrimRight(b, "\x00"))
		}
	}
	base := filepath.Base(loader)
	switch {
	case loader == "":
		app.Why = "is statically linked"
	case strings.HasPrefix(base, "ld-linux"):
		app.Libc = Glibc
	case strings.HasPrefix(base, "ld-musl-"):
		app.Libc = Musl
	default:
		app.Why = "has the ELF interpreter " + loader + ", neither glibc's nor musl's"
	}
	if app.Libc != "" && secureExec(app.ELF) {
		app.Libc, app.Why = "", "is setuid, setgid or has file capabilities (the loader ignores LD_PRELOAD)"
	}
	return app
}

// shebang returns the interpreter of a #! script (relative to the current
// directory when relative, as the kernel takes it).
func shebang(path string) (string, bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", false, err
	}
	defer f.Close()
	head := make([]byte, 256) // the kernel reads BINPRM_BUF_SIZE bytes
	n, _ := f.Read(head)
	head = head[:n]
	if !bytes.HasPrefix(head, []byte("#!")) {
		return "", false, nil
	}
	line, _, _ := bytes.Cut(head[2:], []byte("\n"))
	fields := bytes.Fields(line)
	if len(fields) == 0 {
		return "", false, errors.New("an empty #! line")
	}
	return string(fields[0]), true, nil
}

// secureExec: the kernel will run the program with AT_SECURE (setuid/setgid
// bits or file capabilities that take effect), and the loader then ignores
// LD_PRELOAD. With no_new_privs (allowPrivilegeEscalation: false, what the
// injector sets) the bits take no effect.
func secureExec(path string) bool {
	if nnp, err := unix.PrctlRetInt(unix.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0); err == nil && nnp == 1 {
		return false
	}
	var mount unix.Statfs_t
	if unix.Statfs(path, &mount) == nil && mount.Flags&unix.ST_NOSUID != 0 {
		return false // a nosuid mount: the bits and file capabilities take no effect
	}
	info, err := os.Stat(path)
	if err != nil {
		return false
	}
	if info.Mode()&(fs.ModeSetuid|fs.ModeSetgid) != 0 {
		return true
	}
	n, err := unix.Getxattr(path, "security.capability", nil)
	return err == nil && n > 0
}

func nativeMachine() elf.Machine {
	switch runtime.GOARCH {
	case "amd64":
		return elf.EM_X86_64
	case "arm64":
		return elf.EM_AARCH64
	}
	return elf.EM_NONE
}
