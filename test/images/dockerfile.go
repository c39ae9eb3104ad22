package images

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"
)

// Instruction is one Dockerfile instruction of the subset deploy/images uses.
type Instruction struct {
	// Line is the 1-based line the instruction starts on, for error messages.
	Line int
	// Cmd is the upper-cased keyword (FROM, COPY, RUN, USER, ...).
	Cmd string
	// Flags are the --name=value options (COPY --from, --chmod).
	Flags map[string]string
	// Args are the arguments: JSON (exec) form decoded, otherwise split on blanks,
	// except RUN whose shell command is kept whole in Args[0].
	Args []string
	// JSON reports that the arguments were in exec (JSON array) form.
	JSON bool
}

// Stage is a FROM and the instructions up to the next FROM.
type Stage struct {
	Name  string // the AS name, "" if none
	From  string // the base image reference
	Instr []Instruction
}

// Dockerfile is a parsed Dockerfile: its stages in order, the last one being the image.
type Dockerfile struct {
	Path   string
	Stages []Stage
}

// Final is the stage that produces the image.
func (d *Dockerfile) Final() *Stage { return &d.Stages[len(d.Stages)-1] }

// Stage returns the stage named name.
func (d *Dockerfile) Stage(name string) (*Stage, error) {
	for i := range d.Stages {
		if d.Stages[i].Name == name {
			return &d.Stages[i], nil
		}
	}
	return nil, fmt.Errorf("%s: no stage named %q", d.Path, name)
}

// supported is the instruction subset the builder understands; anything else is an error, so a
// Dockerfile change that the builder would silently ignore fails the build instead.
var supported = map[string]bool{
	"FROM": true, "RUN": true, "COPY": true, "USER": true, "WORKDIR": true,
	"EXPOSE": true, "CMD": true, "ENTRYPOINT": true, "ENV": true,
}

// ParseDockerfile reads path.
func ParseDockerfile(path string) (*Dockerfile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read Dockerfile: %w", err)
	}
	return ParseDockerfileBytes(path, b)
}

// ParseDockerfileBytes parses the subset of Dockerfile syntax deploy/images uses: comments,
// backslash continuations, --flags, exec and shell forms.
func ParseDockerfileBytes(path string, b []byte) (*Dockerfile, error) {
	d := &Dockerfile{Path: path}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	var logical strings.Builder
	start, n := 0, 0
	flush := func() error {
		text := strings.TrimSpace(logical.String())
		logical.Reset()
		if text == "" {
			return nil
		}
		in, err := parseInstruction(start, text)
		if err != nil {
			return fmt.Errorf("%s:%d: %w", path, start, err)
		}
		if in.Cmd == "FROM" {
			st := Stage{From: in.Args[0]}
			if len(in.Args) == 3 && strings.EqualFold(in.Args[1], "AS") {
				st.Name = in.Args[2]
			} else if len(in.Args) != 1 {
				return fmt.Errorf("%s:%d: FROM %q: want `FROM image [AS name]`", path, start, strings.Join(in.Args, " "))
			}
			d.Stages = append(d.Stages, st)
			return nil
		}
		if len(d.Stages) == 0 {
			return fmt.Errorf("%s:%d: %s before the first FROM", path, start, in.Cmd)
		}
		st := &d.Stages[len(d.Stages)-1]
		st.Instr = append(st.Instr, in)
		return nil
	}
	for sc.Scan() {
		n++
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		// Comment lines (also inside a continuation, as BuildKit allows).
		if strings.HasPrefix(trimmed, "#") {
			continue
		}
		if logical.Len() == 0 {
			if trimmed == "" {
				continue
			}
			start = n
		}
		if cont, ok := strings.CutSuffix(strings.TrimRight(line, " \t"), `\`); ok {
			logical.WriteString(cont)
			logical.WriteString(" ")
			continue
		}
		logical.WriteString(line)
		if err := flush(); err != nil {
			return nil, err
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if err := flush(); err != nil {
		return nil, err
	}
	if len(d.Stages) == 0 {
		return nil, fmt.Errorf("%s: no FROM", path)
	}
	return d, nil
}

func parseInstruction(line int, text string) (Instruction, error) {
	cmd, rest, _ := strings.Cut(text, " ")
	in := Instruction{Line: line, Cmd: strings.ToUpper(cmd), Flags: map[string]string{}}
	if !supported[in.Cmd] {
		return in, fmt.Errorf("instruction %s is not supported by the image builder (supported: FROM RUN COPY USER WORKDIR EXPOSE CMD ENTRYPOINT ENV)", in.Cmd)
	}
	rest = strings.TrimSpace(rest)
	for strings.HasPrefix(rest, "--") {
		var flag string
		flag, rest, _ = strings.Cut(rest, " ")
		k, v, ok := strings.Cut(strings.TrimPrefix(flag, "--"), "=")
		if !ok {
			return in, fmt.Errorf("%s flag %q: want --name=value", in.Cmd, flag)
		}
		in.Flags[k] = v
		rest = strings.TrimSpace(rest)
	}
	switch {
	case in.Cmd == "RUN" && !strings.HasPrefix(rest, "["):
		in.Args = []string{rest}
	case strings.HasPrefix(rest, "["):
		if err := json.Unmarshal([]byte(rest), &in.Args); err != nil {
			return in, fmt.Errorf("%s %s: exec form is not a JSON string array: %w", in.Cmd, rest, err)
		}
		in.JSON = true
	default:
		in.Args = strings.Fields(rest)
	}
	if len(in.Args) == 0 {
		return in, fmt.Errorf("%s without arguments", in.Cmd)
	}
	return in, nil
}
