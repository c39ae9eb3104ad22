// Package redischeck is what the Redis test tiers (test/node, test/matrix)
// share to drive a real redis-server and check its data: a minimal RESP2
// client, self-describing values (a value names its key and version and
// carries a CRC, so a torn, stale or cross-key value is caught), pipelined
// loads and reads, a bounded write load, and waiting for a BGSAVE.
package redischeck

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// Client is a minimal RESP2 client: enough for SET/GET/MGET/MULTI/BGSAVE/INFO,
// with pipelining. The tests need nothing more, and no new dependency.
type Client struct {
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
}

// Error is an error reply ("-ERR ...").
type Error string

func (e Error) Error() string { return string(e) }

// Dial connects to 127.0.0.1:port.
func Dial(port int) (*Client, error) {
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 2*time.Second)
	if err != nil {
		return nil, err
	}
	return &Client{conn: conn, r: bufio.NewReaderSize(conn, 1<<20), w: bufio.NewWriterSize(conn, 1<<20)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Send buffers one command.
func (c *Client) Send(args ...string) {
	fmt.Fprintf(c.w, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(c.w, "$%d\r\n%s\r\n", len(a), a)
	}
}

// Receive reads one reply: string, int64, nil, []any or Error (as the
// value, not as err: err is for I/O and protocol failures).
func (c *Client) Receive() (any, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	line, err := c.r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return nil, errors.New("resp: empty line")
	}
	switch line[0] {
	case '+':
		return line[1:], nil
	case '-':
		return Error(line[1:]), nil
	case ':':
		return strconv.ParseInt(line[1:], 10, 64)
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return nil, fmt.Errorf("resp: bad bulk length %q", line)
		}
		if n < 0 {
			return nil, nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(c.r, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return nil, fmt.Errorf("resp: bad array length %q", line)
		}
		if n < 0 {
			return nil, nil
		}
		out := make([]any, n)
		for i := range out {
			if out[i], err = c.Receive(); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("resp: unexpected reply %q", line)
}

// Do sends one command and returns its reply.
func (c *Client) Do(args ...string) (any, error) {
	c.Send(args...)
	if err := c.w.Flush(); err != nil {
		return nil, err
	}
	return c.Receive()
}

// Flush writes buffered commands.
func (c *Client) Flush() error { return c.w.Flush() }

// Info returns the fields of INFO section.
func (c *Client) Info(section string) (map[string]string, error) {
	r, err := c.Do("INFO", section)
	if err != nil {
		return nil, err
	}
	s, ok := r.(string)
	if !ok {
		return nil, fmt.Errorf("INFO %s: reply %v", section, r)
	}
	out := map[string]string{}
	for _, line := range strings.Split(s, "\r\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = v
		}
	}
	return out, nil
}
