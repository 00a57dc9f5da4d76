// Package install is `cloudtaser-wrapper install DIR`: the injector's init
// container copies the wrapper (this very program) and the interposers next
// to it into the pod's volume DIR, where the app container then runs
// DIR/wrapper -- COMMAND. The wrapper image therefore needs no shell and no
// cp: it is this static program and the interposer libraries.
//
// Each file is written to a temporary name and renamed into place (a second
// run replaces the files whole; an app container never sees half a file);
// mode 0755, whatever the umask: the app container may run as another user.
// Exit 0 only when DIR/wrapper is in place; otherwise one line on stderr.
package install

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cloudtaser/cloudtaser/wrapper/internal/launch"
)

// Name is the installed wrapper's file name (the injector runs DIR/wrapper).
const Name = "wrapper"

func fail(format string, args ...any) int {
	fmt.Fprintf(os.Stderr, "cloudtaser-install: "+format+"\n", args...)
	return 1
}

// Run installs into args[0].
func Run(args []string) int {
	if len(args) != 1 || args[0] == "" {
		return fail("usage: cloudtaser-wrapper install TARGET_DIR")
	}
	target := args[0]
	exe, err := launch.Executable()
	if err != nil {
		return fail("cannot find my own executable: %v", err)
	}
	here := filepath.Dir(exe)
	if err := os.MkdirAll(target, 0o755); err != nil {
		return fail("cannot create %s: %v", target, errors.Unwrap(err))
	}
	src, err1 := filepath.EvalSymlinks(here)
	dst, err2 := filepath.EvalSymlinks(target)
	if err1 != nil || err2 != nil {
		return fail("cannot resolve %s or %s", here, target)
	}
	if src == dst {
		return fail("%s is where the wrapper already is", target)
	}
	files := map[string]string{Name: exe}
	libs, _ := filepath.Glob(launch.InterposerGlob(here))
	for _, lib := range libs {
		files[filepath.Base(lib)] = lib
	}
	for name, from := range files {
		if err := copyFile(from, filepath.Join(dst, name)); err != nil {
			return fail("cannot copy %s into %s: %v", name, dst, err)
		}
	}
	info, err := os.Stat(filepath.Join(dst, Name))
	if err != nil || info.Mode().Perm()&0o111 != 0o111 {
		return fail("%s/%s is not executable after the copy", dst, Name)
	}
	names := slices.Sorted(maps.Keys(files))
	fmt.Fprintf(os.Stderr, "cloudtaser-install: wrapper bundle installed in %s (%s)\n", dst,
		strings.Join(names, ", "))
	return 0
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp, err := os.CreateTemp(filepath.Dir(to), "."+filepath.Base(to)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // gone after the rename
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o755); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), to)
}
