package kubelet

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

// process is one node binary in its own process group, killed by the kernel if the test
// binary dies without cleaning up (Pdeathsig), as in test/cluster. containerd's shims are
// the exception: they daemonize out of the group on purpose, so Node.Stop hunts them by the
// socket address that only this node's containerd uses.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	waitErr error
	once    sync.Once
}

func startProcess(name, bin string, args []string, dir string, env []string) (*process, error) {
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
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.waitErr
	default:
		return false, nil
	}
}

// stop sends SIGTERM to the group, waits up to grace, then SIGKILLs the group.
func (p *process) stop(grace time.Duration) {
	p.once.Do(func() {
		pgid := p.cmd.Process.Pid
		if done, _ := p.exited(); !done {
			_ = syscall.Kill(-pgid, syscall.SIGTERM)
		}
		select {
		case <-p.done:
		case <-time.After(grace):
		}
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	})
}

func (p *process) tail(n int64) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return ""
	}
	if int64(len(b)) > n {
		b = b[int64(len(b))-n:]
	}
	return string(b)
}

// waitFor polls check until it succeeds, the process exits or ctx ends.
func (p *process) waitFor(ctx context.Context, interval time.Duration, check func(context.Context) error) error {
	var last error
	for {
		if done, werr := p.exited(); done {
			return fmt.Errorf("%s exited before it became ready (%v); log %s:\n%s", p.name, werr, p.logPath, p.tail(4096))
		}
		if last = check(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w (last check: %v); log %s:\n%s", p.name, ctx.Err(), last, p.logPath, p.tail(4096))
		case <-time.After(interval):
		}
	}
}
