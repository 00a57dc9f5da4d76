//go:build !unix

package cloudtaser

import (
	"errors"
	"fmt"
)

// readSecretFD is unavailable off Unix: the wrapper only runs on Linux.
func readSecretFD(fd int, name string) ([]byte, error) {
	return nil, fmt.Errorf("cloudtaser: secret %q (fd %d): %w", name, fd, errors.ErrUnsupported)
}
