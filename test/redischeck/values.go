package redischeck

import (
	"fmt"
	"hash/crc32"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Value is a self-describing value: it names its key and version, is filled
// with a pattern derived from both, and ends with a CRC of the rest. A torn,
// stale-pointer or cross-key value cannot pass CheckValue.
func Value(key string, ver, size int) string {
	prefix := fmt.Sprintf("k=%s;v=%d;", key, ver)
	unit := fmt.Sprintf("%s/%d|", key, ver)
	n := size - len(prefix) - len(";crc=00000000")
	if n < 0 {
		n = 0
	}
	var b strings.Builder
	b.Grow(size)
	b.WriteString(prefix)
	for b.Len() < len(prefix)+n {
		rest := len(prefix) + n - b.Len()
		if rest >= len(unit) {
			b.WriteString(unit)
		} else {
			b.WriteString(unit[:rest])
		}
	}
	body := b.String()
	return body + fmt.Sprintf(";crc=%08x", crc32.ChecksumIEEE([]byte(body)))
}

// CheckValue returns the version encoded in v, or an error if v is not
// exactly what Value(key, version, len(v)) produces.
func CheckValue(key, v string) (int, error) {
	prefix := "k=" + key + ";v="
	if !strings.HasPrefix(v, prefix) {
		return 0, fmt.Errorf("key %s: value does not name it: %.40q", key, v)
	}
	rest := v[len(prefix):]
	semi := strings.IndexByte(rest, ';')
	if semi < 0 {
		return 0, fmt.Errorf("key %s: no version: %.40q", key, v)
	}
	ver, err := strconv.Atoi(rest[:semi])
	if err != nil {
		return 0, fmt.Errorf("key %s: bad version: %.40q", key, v)
	}
	if want := Value(key, ver, len(v)); v != want {
		return 0, fmt.Errorf("key %s: value for version %d is corrupt (len %d)", key, ver, len(v))
	}
	return ver, nil
}

// KeyName is the name of key i.
func KeyName(i int) string { return fmt.Sprintf("key:%06d", i) }

// Load writes n keys of size bytes at version 0, pipelined.
func Load(t testing.TB, c *Client, n, size int) {
	t.Helper()
	const batch = 200
	for i := 0; i < n; i += batch {
		end := min(i+batch, n)
		for k := i; k < end; k++ {
			c.Send("SET", KeyName(k), Value(KeyName(k), 0, size))
		}
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
		for k := i; k < end; k++ {
			r, err := c.Receive()
			if err != nil || r != "OK" {
				t.Fatalf("SET %s: %v %v", KeyName(k), r, err)
			}
		}
	}
}

// MGetArgs is MGET of keys first..end-1.
func MGetArgs(first, end int) []string {
	args := []string{"MGET"}
	for k := first; k < end; k++ {
		args = append(args, KeyName(k))
	}
	return args
}

// Versions checks an MGET reply for keys first.. and returns their
// versions (-1 for a missing key).
func Versions(first int, reply any) ([]int, error) {
	arr, ok := reply.([]any)
	if !ok {
		return nil, fmt.Errorf("MGET: reply %T %.80v", reply, reply)
	}
	vers := make([]int, len(arr))
	for k, v := range arr {
		if v == nil {
			vers[k] = -1
			continue
		}
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("MGET %s: reply %T", KeyName(first+k), v)
		}
		ver, err := CheckValue(KeyName(first+k), s)
		if err != nil {
			return nil, err
		}
		vers[k] = ver
	}
	return vers, nil
}

// ReadAll reads keys 0..n-1 with MGET and checks every value; it returns
// the versions (-1 for a missing key).
func ReadAll(c *Client, n int) ([]int, error) {
	vers := make([]int, 0, n)
	const batch = 500
	for i := 0; i < n; i += batch {
		end := min(i+batch, n)
		r, err := c.Do(MGetArgs(i, end)...)
		if err != nil {
			return nil, err
		}
		v, err := Versions(i, r)
		if err != nil {
			return nil, err
		}
		if len(v) != end-i {
			return nil, fmt.Errorf("MGET: %d values for %d keys", len(v), end-i)
		}
		vers = append(vers, v...)
	}
	return vers, nil
}

// WaitSaved polls until no BGSAVE is running and the last one succeeded.
func WaitSaved(c *Client, deadline time.Time) error {
	for time.Now().Before(deadline) {
		info, err := c.Info("persistence")
		if err != nil {
			return err
		}
		if info["rdb_bgsave_in_progress"] == "0" {
			if st := info["rdb_last_bgsave_status"]; st != "ok" {
				return fmt.Errorf("rdb_last_bgsave_status %s", st)
			}
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("BGSAVE still in progress at the deadline")
}
