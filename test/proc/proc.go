// Package proc supervises the binaries the test tiers run (etcd,
// kube-apiserver, containerd, kubelet, ...): each in its own process group,
// logging to a file, killed with the test binary.
package proc

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Process is one binary running in its own process group.
//
// Each binary gets its own group (Setpgid) so that a ^C in the terminal reaches
// only the test binary, which then stops the group in order; Pdeathsig is the
// safety net for the cases where no cleanup code runs at all (go test -timeout
// panics, SIGKILL of the test binary): the kernel then kills the child so that
// no etcd or apiserver outlives the test and keeps its ports and data dir.
// (Pdeathsig fires when the forking OS thread exits; the Go runtime only ends
// threads whose goroutine exits while locked to them, which nothing here does.)
type Process struct {
	Name    string
	Cmd     *exec.Cmd
	LogPath string
	done    chan struct{}
	waitErr error
	once    sync.Once
}

// Start starts bin with args in dir, with env added to this process's
// environment, appending stdout and stderr to dir/<name>.log.
func Start(name, bin string, args []string, dir string, env []string) (*Process, error) {
	logPath := filepath.Join(dir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open log for %s: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s (%s): %w", name, bin, err)
	}
	p := &Process{Name: name, Cmd: cmd, LogPath: logPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	return p, nil
}

// Exited reports whether the process has ended, and how.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.waitErr
	default:
		return false, nil
	}
}

// Stop sends SIGTERM to the process group, waits up to grace, then SIGKILLs the
// group. It is safe to call more than once.
func (p *Process) Stop(grace time.Duration) {
	p.once.Do(func() {
		pgid := p.Cmd.Process.Pid
		if done, _ := p.Exited(); !done {
			_ = syscall.Kill(-pgid, syscall.SIGTERM)
		}
		select {
		case <-p.done:
		case <-time.After(grace):
		}
		// Also reap anything the binary may have left in its group.
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	})
}

// Kill SIGKILLs the process group at once: a crash, not a shutdown. Safe to
// call more than once, and after Stop.
func (p *Process) Kill() {
	p.once.Do(func() {
		_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	})
}

// Wait waits at most timeout for the process to exit and reports whether it
// did, and its exit error (nil for status 0).
func (p *Process) Wait(timeout time.Duration) (exited bool, err error) {
	select {
	case <-p.done:
		return true, p.waitErr
	case <-time.After(timeout):
		return false, nil
	}
}

// Tail returns the last n bytes of the process log, for error messages.
func (p *Process) Tail(n int64) string {
	f, err := os.Open(p.LogPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := st.Size() - n
	if off < 0 {
		off = 0
	}
	buf := make([]byte, st.Size()-off)
	_, _ = f.ReadAt(buf, off)
	return string(buf)
}

// WaitFor polls check every interval until it returns nil, the process exits,
// or ctx ends; the error then includes the last lines of the process log.
func (p *Process) WaitFor(ctx context.Context, interval time.Duration, check func(context.Context) error) error {
	var last error
	for {
		if done, werr := p.Exited(); done {
			return fmt.Errorf("%s exited before it became ready (%v); log %s:\n%s", p.Name, werr, p.LogPath, p.Tail(4096))
		}
		if last = check(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w (last check: %v); log %s:\n%s",
				p.Name, ctx.Err(), last, p.LogPath, p.Tail(4096))
		case <-time.After(interval):
		}
	}
}
